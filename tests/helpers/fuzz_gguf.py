"""Mutated copies of a GGUF, and a worker that loads them (tests/hardening/test_bad_input.py drives it).

`mutate(data, seed)` returns a corrupted copy: flipped bytes, overwritten header words, a
truncation, a mutation inside a metadata array (token strings made equal or flipped, merges,
scores, token types, the AHN layer flags, array lengths), or a structurally valid file with
contradictory metadata. The worker
(`python fuzz_gguf.py BASE FIRST COUNT WORKDIR`) loads each mutation with ahn_gguf.Llama and
decodes a few tokens, writing one JSON line per case; a line "start N" is flushed before case
N, so a crashed worker shows which case killed it.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys


def _header_end(data: bytes) -> int:
    """Offset where tensor data starts in the (valid) base file."""
    from ahn_gguf.gguf_io.header import parse_header

    return parse_header(data).data_start


def array_layout(data: bytes) -> dict[str, dict]:
    """Where each metadata array's elements lie in a (valid) GGUF: key -> {etype, length_at,
    elements: [(offset, size), ...]} -- string elements span their bytes after the 8-byte length."""
    from ahn_gguf.gguf_io.header import ARRAY, SCALAR_FORMATS, STRING

    pos = 24  # magic, version, tensor count, metadata count
    (n_kv,) = struct.unpack_from("<Q", data, 16)
    out = {}

    def string_at(p):
        (n,) = struct.unpack_from("<Q", data, p)
        return p + 8, n

    for _ in range(n_kv):
        start, n = string_at(pos)
        key = data[start:start + n].decode("utf-8", "replace")
        pos = start + n
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if vtype in SCALAR_FORMATS:
            pos += struct.calcsize(SCALAR_FORMATS[vtype])
        elif vtype == STRING:
            s0, n = string_at(pos)
            pos = s0 + n
        elif vtype == ARRAY:
            (etype,) = struct.unpack_from("<I", data, pos)
            length_at = pos + 4
            (count,) = struct.unpack_from("<Q", data, length_at)
            pos = length_at + 8
            elements = []
            for _ in range(count):
                if etype == STRING:
                    s0, n = string_at(pos)
                    elements.append((s0, n))
                    pos = s0 + n
                else:
                    size = struct.calcsize(SCALAR_FORMATS[etype])
                    elements.append((pos, size))
                    pos += size
            out[key] = {"etype": etype, "length_at": length_at, "elements": elements}
    return out


def mutate_array(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A mutation inside a metadata array: token strings (made equal to another, bytes flipped),
    merges, scores, token types, the AHN layer flags, an array's length."""
    from ahn_gguf.gguf_io.header import STRING

    b = bytearray(data)
    arrays = array_layout(data)
    key = rng.choice(sorted(arrays))
    arr = arrays[key]
    elements = arr["elements"]
    how = rng.choice(["duplicate", "flip", "extreme", "length"]) if elements else "length"
    if how == "length":
        struct.pack_into("<Q", b, arr["length_at"], rng.choice(EXTREMES_64 + [len(elements) + 1, max(0, len(elements) - 1)]))
    elif arr["etype"] == STRING and how == "duplicate":
        # two equal strings, lengths kept: the copy of another element of the same length
        i = rng.randrange(len(elements))
        same = [j for j, e in enumerate(elements) if e[1] == elements[i][1] and j != i]
        if same:
            (oi, n), (oj, _) = elements[i], elements[rng.choice(same)]
            b[oi:oi + n] = data[oj:oj + n]
        else:
            how = "flip"
    if how in ("flip", "extreme") and elements:
        for _ in range(rng.randint(1, 4)):
            off, n = elements[rng.randrange(len(elements))]
            if n == 0:
                continue
            if how == "extreme" and n in (4, 8):
                pool = EXTREMES_32 if n == 4 else EXTREMES_64
                value = rng.choice(pool + ([struct.unpack("<I", struct.pack("<f", float("nan")))[0]] if n == 4 else []))
                struct.pack_into("<I" if n == 4 else "<Q", b, off, value)
            else:
                k = off + rng.randrange(n)
                b[k] ^= rng.choice([1 << rng.randrange(8), 0xFF])
    return f"array:{key}:{how}", bytes(b)


EXTREMES_32 = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 7, 255, 65536]
EXTREMES_64 = [0, 1, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1 << 32, 1 << 40, 12345]


def mutate(data: bytes, seed: int) -> tuple[str, bytes]:
    rng = random.Random(seed)
    b = bytearray(data)
    hdr = _header_end(data)
    kind = rng.choice(["flip", "flip", "word32", "word64", "truncate", "truncate_header", "data_flip", "string_len",
                       "array", "array", "array"])
    if kind == "array":
        return mutate_array(data, rng)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(0, hdr)
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "word32":
        i = rng.randrange(0, max(1, hdr - 4))
        b[i:i + 4] = struct.pack("<I", rng.choice(EXTREMES_32 + [rng.getrandbits(32)]))
    elif kind == "word64":
        i = rng.randrange(0, max(1, hdr - 8))
        b[i:i + 8] = struct.pack("<Q", rng.choice(EXTREMES_64 + [rng.getrandbits(64)]))
    elif kind == "truncate":
        b = b[:rng.randrange(0, len(b))]
    elif kind == "truncate_header":
        b = b[:rng.randrange(0, hdr + 1)]
    elif kind == "data_flip":
        # values in tensor data: NaN/Inf patterns and random bits (the load must not crash)
        for _ in range(rng.randint(1, 32)):
            i = rng.randrange(hdr, len(b) - 4)
            b[i:i + 4] = rng.choice([struct.pack("<f", float("nan")), struct.pack("<f", float("inf")), rng.randbytes(4)])
    elif kind == "string_len":
        # the length prefix of a string somewhere in the header
        positions = [i for i in range(8, hdr - 8) if b[i + 4:i + 8] == b"\0\0\0\0" and 0 < struct.unpack_from("<I", b, i)[0] < 64]
        if positions:
            i = rng.choice(positions)
            b[i:i + 8] = struct.pack("<Q", rng.choice(EXTREMES_64))
        else:
            b[rng.randrange(0, hdr)] ^= 0xFF
    return kind, bytes(b)


def structured_cases(base_path: str) -> list[tuple[str, dict]]:
    """Valid GGUF structure, contradictory AHN metadata: (name, {key: new value or None to drop})."""
    from ahn_gguf import constants as C

    a = "llamaahn"
    return [
        ("variant DeltaNet with GDN tensors", {C.KEY_VARIANT.format(arch=a): "DeltaNet"}),
        ("variant Mamba2 with GDN tensors", {C.KEY_VARIANT.format(arch=a): "Mamba2"}),
        ("unknown variant", {C.KEY_VARIANT.format(arch=a): "LSTM"}),
        ("window 0", {C.KEY_WINDOW.format(arch=a): 0}),
        ("window huge", {C.KEY_WINDOW.format(arch=a): 0xFFFFFFFF}),
        ("window missing", {C.KEY_WINDOW.format(arch=a): None}),
        ("variant missing", {C.KEY_VARIANT.format(arch=a): None}),
        ("head count 0", {f"{a}.attention.head_count": 0}),
        ("kv head count 0", {f"{a}.attention.head_count_kv": 0}),
        ("kv heads do not divide heads", {f"{a}.attention.head_count_kv": 3}),
        ("head count 3", {f"{a}.attention.head_count": 3}),
        ("block count 3", {f"{a}.block_count": 3}),
        ("block count 0", {f"{a}.block_count": 0}),
        ("block count huge", {f"{a}.block_count": 100000}),
        ("embedding length 0", {f"{a}.embedding_length": 0}),
        ("embedding length wrong", {f"{a}.embedding_length": 48}),
        ("layer flags too short", {C.KEY_LAYERS.format(arch=a): [1]}),
        ("layer flags with full attention", {C.KEY_LAYERS.format(arch=a): [1, 0]}),
        ("ffn length wrong", {f"{a}.feed_forward_length": 96}),
    ]


def main(argv: list[str]) -> int:
    base, first, count, work = argv[1], int(argv[2]), int(argv[3]), argv[4]
    import ahn_gguf
    from ahn_gguf.errors import AHNError

    data = open(base, "rb").read()
    out = open(os.path.join(work, f"results-{first}.jsonl"), "a")
    path = os.path.join(work, f"case-{first}.gguf")
    for i in range(first, first + count):
        kind, mutated = mutate(data, i)
        with open(path, "wb") as f:
            f.write(mutated)
        out.write(f"start {i}\n")
        out.flush()
        os.fsync(out.fileno())
        rec = {"case": i, "kind": kind}
        try:
            # one thread: ggml threads spin at barriers, and a loaded 2-core machine makes that seconds per case
            llm = ahn_gguf.Llama(path, n_ctx=256, n_batch=64, n_threads=1, n_threads_batch=1, verbose=False)
            res = llm.create_completion("fuzz me", max_tokens=3, temperature=0.0)
            rec["result"] = "loaded"
            rec["tokens"] = res["usage"]["completion_tokens"]
            del llm
        except Exception as e:  # noqa: BLE001 - the test judges the exception type and message
            rec["result"] = "rejected"
            rec["error_type"] = type(e).__name__
            rec["clear"] = isinstance(e, (AHNError, ValueError)) and bool(str(e).strip())
            rec["error"] = f"{type(e).__name__}: {e}"[:500]
        out.write(json.dumps(rec) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
