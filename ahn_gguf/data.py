"""Real long-form English text, offline: the Python 3.11 documentation sources, and how they are split.

Source (default): Debian's `python3.11-doc` package (bookworm, PSF License Version 2), the
reStructuredText sources of the Python 3.11 documentation that it installs under
`usr/share/doc/python3.11/html/_sources/**/*.rst.txt` (497 documents, 11 MB, 2.86M SmolLM2
tokens; 111 documents are longer than 8192 tokens: the library reference, the language
reference, the HOWTOs, the "What's New" series). The .deb is fetched with
`apt-get download python3.11-doc` (no root, no install) into the cache, or taken from a local
path, and unpacked with `dpkg-deb -x` (or, without dpkg, by reading the ar archive directly).
Why this text: it is real, long, coherent English prose with code, reachable offline through
the Debian archive by name, licensed for this use, and long enough per document for
8k-token contexts. It is technical, so perplexities are those of documentation, not of fiction.

Split (document level, deterministic, independent of the tokenizer and of the download's
version): a document is *held out* when it is long (>= HELDOUT_MIN_CHARS characters, about
8k tokens) and the stable hash of its relative path falls in the first HELDOUT_FRACTION of the
hash range. Held-out documents are used only by evaluation, never in a training batch. All other
documents are training documents.

Packing: each document is tokenized on its own (no BOS: SmolLM2's tokenizer adds none) and cut
into non-overlapping sequences of L tokens; a tail shorter than L is dropped, and documents
shorter than L give no sequence. Tokens of two documents are never mixed in one sequence.
`TrainSequences` yields batches in a seeded, epoch-wise shuffled order; its position (epoch,
index) is part of a distillation checkpoint, so a resumed run sees the same batches.

Any folder of text files can stand in for the Python docs (`load_text_folder`, `--data DIR`):
the same split and packing apply (tests use this with tiny synthetic documents).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ahn_gguf.errors import AHNError

from .sdist import cache_dir, sha256_file

DEB_PACKAGE = "python3.11-doc"
# the version this project's AHN was trained on (Debian bookworm-security); apt may offer a newer
# one later, which is accepted with a warning (the split depends only on document paths)
DEB_VERSION = "3.11.2-6+deb12u9"
DEB_SHA256 = "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be"
SOURCES_IN_DEB = "usr/share/doc/python3.11/html/_sources"
DOC_SUFFIX = ".rst.txt"
DATA_SOURCE = "python3.11-doc"  # the name of the default data source on the command line
LICENSE = "PSF License Version 2 (Python documentation, Debian package python3.11-doc)"

HELDOUT_MIN_CHARS = 32_000        # ~8k SmolLM2 tokens: long enough for the longest eval context
HELDOUT_FRACTION = 0.12           # of the long documents (stable hash of the path)
TEXT_SUFFIXES = (".txt", ".md", ".rst")


class DataError(AHNError, RuntimeError):
    """The text could not be obtained or is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class Document:
    path: str    # relative to the corpus root, "/"-separated: the identity used by the split
    text: str


@dataclass(frozen=True)
class Split:
    train: tuple[Document, ...]
    heldout: tuple[Document, ...]

    def describe(self) -> str:
        chars = lambda docs: sum(len(d.text) for d in docs)  # noqa: E731
        return (f"{len(self.train)} training documents ({chars(self.train) / 1e6:.1f}M chars), "
                f"{len(self.heldout)} held-out ({chars(self.heldout) / 1e6:.2f}M chars)")


# --- fetching the Debian package ---------------------------------------------------------------

def _deb_cache() -> Path:
    path = cache_dir() / "debian"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_deb(deb: str | Path | None = None) -> Path:
    """The python3.11-doc .deb: `deb` if given, else a cached one, else `apt-get download`."""
    if deb is not None:
        deb = Path(deb)
        if not deb.is_file():
            raise DataError(f"{deb}: no such .deb file")
        return deb
    cached = sorted(_deb_cache().glob(f"{DEB_PACKAGE}_*.deb"))
    pinned = [p for p in cached if p.name.startswith(f"{DEB_PACKAGE}_{DEB_VERSION}_")]
    if pinned or cached:
        return (pinned or cached)[-1]
    if shutil.which("apt-get") is None:
        raise DataError(f"apt-get is not available to download {DEB_PACKAGE}; download the .deb elsewhere "
                        f"(`apt-get download {DEB_PACKAGE}`) and pass its path")
    with tempfile.TemporaryDirectory(dir=_deb_cache(), prefix=".apt-") as tmp:
        errors = []
        for spec in (f"{DEB_PACKAGE}={DEB_VERSION}", DEB_PACKAGE):
            proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
            got = sorted(Path(tmp).glob(f"{DEB_PACKAGE}_*.deb"))
            if proc.returncode == 0 and got:
                break
            errors.append(f"apt-get download {spec}: {proc.stderr.strip()[-500:]}")
        else:
            raise DataError(f"could not download {DEB_PACKAGE}:\n" + "\n".join(errors)
                            + f"\n(run `apt-get update`, or pass a local {DEB_PACKAGE} .deb)")
        deb = got[0]
        if sha256_file(deb) != DEB_SHA256:
            warnings.warn(f"{deb.name} is not the pinned {DEB_PACKAGE} {DEB_VERSION} (sha256 {DEB_SHA256[:12]}...); "
                          f"the split is by path and still holds, but the text may differ slightly", stacklevel=2)
        dest = _deb_cache() / deb.name
        os.replace(deb, dest)
    return dest


def _extract_deb(deb: Path, into: Path) -> None:
    """Unpack a .deb's data archive into `into`: dpkg-deb -x, else the ar archive read directly."""
    if shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)
        return
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                with tempfile.NamedTemporaryFile(suffix=name) as tmp:
                    tmp.write(f.read(size))
                    tmp.flush()
                    with tarfile.open(tmp.name) as tf:
                        tf.extractall(into, filter="data")
                return
            f.seek(size + (size & 1), 1)
    raise DataError(f"{deb} has no data.tar member")


def python_docs_root(deb: str | Path | None = None) -> Path:
    """Folder of the Python 3.11 documentation's reST sources (extracted once into the cache)."""
    deb = fetch_deb(deb)
    digest = sha256_file(deb)
    target = _deb_cache() / f"{DEB_PACKAGE}-{digest[:16]}"
    if (target / ".complete").is_file():
        return target / "_sources"
    with tempfile.TemporaryDirectory(dir=_deb_cache(), prefix=".x-") as tmp:
        _extract_deb(deb, Path(tmp))
        src = Path(tmp) / SOURCES_IN_DEB
        if not src.is_dir():
            raise DataError(f"{deb.name} has no {SOURCES_IN_DEB}: not the {DEB_PACKAGE} package?")
        out = Path(tmp) / "out"
        out.mkdir()
        os.replace(src, out / "_sources")
        (out / "deb.json").write_text(json.dumps({"deb": deb.name, "sha256": digest, "license": LICENSE}))
        (out / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(out, target)
    return target / "_sources"


def python_docs_provenance(deb: str | Path | None = None) -> dict:
    root = python_docs_root(deb)
    info = json.loads((root.parent / "deb.json").read_text())
    info["member"] = f"{SOURCES_IN_DEB}/**/*{DOC_SUFFIX}"
    return info


# --- documents --------------------------------------------------------------------------------

def load_text_folder(root: str | Path, suffixes=TEXT_SUFFIXES) -> list[Document]:
    """Every text file below `root` whose name ends with one of `suffixes`, sorted by path."""
    root = Path(root)
    docs = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.endswith(tuple(suffixes)):
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                docs.append(Document(path.relative_to(root).as_posix(), text))
    if not docs:
        raise DataError(f"no text files ({', '.join(suffixes)}) below {root}")
    return docs


def python_docs(deb: str | Path | None = None) -> list[Document]:
    """The 497 reST sources of the Python 3.11 documentation (python3.11-doc), sorted by path."""
    return load_text_folder(python_docs_root(deb), (DOC_SUFFIX,))


def load_source(source: str | None = None) -> tuple[list[Document], dict]:
    """(documents, provenance) of a data source: "python3.11-doc" (default), a .deb of it, or a folder."""
    if source in (None, "", DATA_SOURCE):
        return python_docs(), python_docs_provenance()
    path = Path(source)
    if path.is_file() and path.suffix == ".deb":
        return python_docs(path), python_docs_provenance(path)
    if path.is_dir():
        return load_text_folder(path), {"folder": str(path.resolve())}
    raise DataError(f"unknown data source {source!r}: expected {DATA_SOURCE!r}, a {DEB_PACKAGE} .deb or a folder")


def stable_hash(path: str) -> float:
    """A number in [0, 1) fixed by the document's relative path alone."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def is_heldout(doc: Document, min_chars: int = HELDOUT_MIN_CHARS, fraction: float = HELDOUT_FRACTION) -> bool:
    return len(doc.text) >= min_chars and stable_hash(doc.path) < fraction


def split_documents(docs, min_chars: int = HELDOUT_MIN_CHARS, fraction: float = HELDOUT_FRACTION) -> Split:
    """Held-out = long documents whose path hash is in the first `fraction`; the rest train."""
    heldout = tuple(d for d in docs if is_heldout(d, min_chars, fraction))
    train = tuple(d for d in docs if not is_heldout(d, min_chars, fraction))
    return Split(train, heldout)


# --- tokenization and packing ---------------------------------------------------------------------

def load_tokenizer(model_dir: str | Path):
    """The `tokenizers.Tokenizer` of a Hugging Face folder (its tokenizer.json)."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"no tokenizer.json in {model_dir}")
    return Tokenizer.from_file(str(path))


def tokenize(docs, tokenizer) -> list[np.ndarray]:
    """Token ids (int32) of each document, no special tokens added. Deterministic."""
    encodings = tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


def pack(token_docs, length: int) -> np.ndarray:
    """[N, length] int32: non-overlapping `length`-token pieces of each document, tails dropped."""
    rows = [t[i * length:(i + 1) * length] for t in token_docs for i in range(len(t) // length)]
    if not rows:
        return np.zeros((0, length), dtype=np.int32)
    return np.stack(rows).astype(np.int32)


class TrainSequences:
    """Packed training sequences served in batches, in a seeded order reshuffled every epoch.

    The position (epoch, index) is the whole state: `state_dict()` / `load_state_dict()` restore
    it, so a resumed run continues with exactly the batches an uninterrupted one would see.
    """

    def __init__(self, sequences: np.ndarray, seed: int = 0):
        if len(sequences) == 0:
            raise DataError("no training sequence: every training document is shorter than the sequence length")
        self.sequences = sequences
        self.seed = seed
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        return len(self.sequences)

    def _order(self, epoch: int) -> np.ndarray:
        if getattr(self, "_order_epoch", None) != epoch:
            self._order_epoch = epoch
            self._order_cache = np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))
        return self._order_cache

    def next_batch(self, batch_size: int) -> np.ndarray:
        rows = []
        while len(rows) < batch_size:
            if self.index >= len(self.sequences):
                self.epoch, self.index = self.epoch + 1, 0
            rows.append(self._order(self.epoch)[self.index])
            self.index += 1
        return self.sequences[np.asarray(rows)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": len(self.sequences)}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != len(self.sequences) or state["seed"] != self.seed:
            raise DataError(f"the checkpoint's data ({state['n']} sequences, seed {state['seed']}) is not this run's "
                            f"({len(self.sequences)} sequences, seed {self.seed}): same data source, length and seed?")
        self.epoch, self.index = state["epoch"], state["index"]


def training_sequences(split: Split, tokenizer, length: int) -> np.ndarray:
    return pack(tokenize(split.train, tokenizer), length)
