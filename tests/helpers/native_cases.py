"""Random inputs for the native AHN memory op, and the reference they are checked against.

Shared by tests/native/test_native.py and tests/native/test_native_cuda.py. A case is realistic where it matters: gates in the ranges the trained gate
projections produce, a K/V window cache larger than the rows a step reads, rows gathered
in scrambled order from several streams, tokens with nothing evicted interleaved, and a
non-zero starting state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ahn_gguf import constants

try:  # the project's PyTorch reference (ahn_gguf/reference), when present
    from ahn_gguf.reference.recurrence import naive_scan
except ImportError:  # not written yet in this checkout: the numpy loop below stands in
    naive_scan = None


@dataclass
class Case:
    variant: str
    q: np.ndarray          # (n_seqs, T, H, d) f32
    k_cache: np.ndarray    # (n_stream, kv_size, H_kv, d) f32 | f16, a strided view
    v_cache: np.ndarray    # same logical shape, or physical transposed (n_stream, H_kv, d, kv_size)
    gates: np.ndarray      # (n_stream, kv_size, G) f32 | f16, a strided view
    idx: np.ndarray        # (n_seqs, T) int32
    state: np.ndarray      # (n_seqs, H, d, d) f32, native (transposed) layout
    v_transposed: bool = False
    meta: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        """memory_step's arguments, with a fresh copy of the state (each run updates it)."""
        return dict(variant=self.variant, q=self.q, k_cache=self.k_cache, v_cache=self.v_cache, gates=self.gates,
                    idx=self.idx, state=self.state.copy(), v_transposed=self.v_transposed)


def make_case(rng: np.random.Generator, variant: str, *, d: int = 64, n_head_kv: int = 2, n_rep: int = 2,
              n_seqs: int = 2, n_tokens: int = 8, kv_size: int = 64, n_stream: int = 2,
              kv_dtype=np.float32, v_transposed: bool = False, evict_prob: float = 0.7,
              gates_dtype=np.float32) -> Case:
    variant = constants.canonical_variant(variant)
    H = n_head_kv * n_rep
    # K/V live inside bigger buffers (extra heads, padded dims) so strides are not the trivial ones
    k_buf = rng.standard_normal((n_stream, kv_size, n_head_kv + 1, d + 8)).astype(kv_dtype)
    k_cache = k_buf[:, :, 1:, 3:3 + d]
    if v_transposed:  # llama.cpp without flash attention: V stored (stream, head, dim, cell)
        v_buf = rng.standard_normal((n_stream, n_head_kv, d, kv_size + 5)).astype(kv_dtype)
        v_cache = v_buf[..., 2:2 + kv_size]
    else:
        v_buf = rng.standard_normal((n_stream, kv_size, n_head_kv, d + 4)).astype(kv_dtype)
        v_cache = v_buf[..., :d]

    # write gates as the trained projections produce them
    n_rows = n_stream * kv_size
    shape = (n_stream, kv_size, H)
    if variant == constants.MAMBA2:
        dt = np.log1p(np.exp(rng.normal(-1.0, 1.0, shape)))             # softplus > 0
        A = -np.exp(rng.uniform(-2.0, 0.5, H))                          # -exp(A_log)
        gates = np.concatenate([dt * A, dt], axis=-1)
    elif variant == constants.GDN:
        g = -np.exp(rng.uniform(-2.0, 0.5, H)) * np.log1p(np.exp(rng.normal(-1.0, 1.0, shape)))
        beta = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, shape)))
        gates = np.concatenate([g, beta], axis=-1)
    else:
        gates = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, shape)))
    # a gate store of ahn.memory_type = f16 holds F16 values (the reference reads the same ones)
    gates_buf = np.zeros((n_stream, kv_size, gates.shape[-1] + 3), gates_dtype)
    gates_buf[..., :gates.shape[-1]] = gates
    gates = gates_buf[..., :gates.shape[-1]]

    # each token evicts a distinct row, scrambled across streams; -1 where nothing leaves
    need = n_seqs * n_tokens
    rows = rng.permutation(max(n_rows, need))[:need] % n_rows
    idx = np.where(rng.random(need) < evict_prob, rows, -1).astype(np.int32).reshape(n_seqs, n_tokens)

    # queries too sit in a padded buffer (only the head dim must be contiguous)
    q_buf = (rng.standard_normal((n_seqs, n_tokens, H + 1, d + 4)) * rng.uniform(0.5, 3.0)).astype(np.float32)
    q = q_buf[:, :, 1:, 2:2 + d]
    state = (rng.standard_normal((n_seqs, H, d, d)) * 0.3).astype(np.float32)
    return Case(variant, q, k_cache, v_cache, gates, idx, state, v_transposed,
                dict(d=d, H=H, n_head_kv=n_head_kv, n_rep=n_rep, n_stream=n_stream, kv_size=kv_size))


# --- the reference ------------------------------------------------------------------------------


def _l2norm(variant: str, x: np.ndarray) -> np.ndarray:
    ss = np.sum(x * x, axis=-1, keepdims=True)
    if variant == constants.MAMBA2:
        return x / np.maximum(np.sqrt(ss), 1e-12)      # torch F.normalize
    return x / np.sqrt(ss + 1e-6)                       # fla l2norm


def numpy_scan(variant, q, k, v, g, b, write_mask, state):
    """docs/AHN-SPEC.md's recurrence for one sequence in float64, M in SPEC orientation M[key][value].

    q, k, v: (T, H, d), k/v already repeat-interleaved to H heads, not normalised;
    g, b: (T, H) log-decay (0 for DN) and beta / dt; write_mask (T,); state (H, d, d).
    Returns (o (T, H, d), final state)."""
    variant = constants.canonical_variant(variant)
    T, H, d = q.shape
    M = np.array(state, np.float64)
    o = np.zeros((T, H, d))
    scale = 1.0 if variant == constants.MAMBA2 else d ** -0.5
    for t in range(T):
        if write_mask[t]:
            kn = _l2norm(variant, k[t])
            e = np.exp(g[t])[:, None, None]
            if variant == constants.MAMBA2:
                M = e * M + b[t][:, None, None] * kn[:, :, None] * v[t][:, None, :]
            else:
                M = e * M
                delta = b[t][:, None] * (v[t] - np.einsum("hij,hi->hj", M, kn))
                M = M + kn[:, :, None] * delta[:, None, :]
        o[t] = scale * np.einsum("hij,hi->hj", M, _l2norm(variant, q[t]))
    return o, M


def gathered_inputs(case: Case, s: int):
    """Sequence s of a case as the reference wants it: (q, k, v, g, b, write_mask, state)
    in float64, K/V rows gathered by idx and repeat-interleaved, state in SPEC orientation."""
    m = case.meta
    H, n_rep, kv = m["H"], m["n_rep"], m["kv_size"]
    v_log = case.v_cache.transpose(0, 3, 1, 2) if case.v_transposed else case.v_cache
    rows = case.idx[s]
    T = rows.shape[0]
    write = rows >= 0
    r = np.where(write, rows, 0)
    u, c = r // kv, r % kv
    heads = np.arange(H) // n_rep                         # repeat-interleave (transformers' repeat_kv)
    k = case.k_cache[u, c][:, heads].astype(np.float64)   # (T, H, d); F16 values exactly as the kernel sees them
    v = v_log[u, c][:, heads].astype(np.float64)
    gr = case.gates[u, c].astype(np.float64)              # (T, G); F16 gates exactly as the kernel sees them
    if case.variant == constants.DN:
        g, b = np.zeros((T, H)), gr[:, :H]
    else:
        g, b = gr[:, :H], gr[:, H:]
    for x in (k, v, g, b):
        x[~write] = 0.0
    state = case.state[s].astype(np.float64).transpose(0, 2, 1)   # native [h][j][i] -> SPEC M[h][i][j]
    return case.q[s].astype(np.float64), k, v, g, b, write, state


def reference(case: Case, *, use_naive_scan: bool | None = None):
    """(out (n_seqs, T, H, d), final state in native layout), float64.

    Uses ahn_gguf.reference.recurrence.naive_scan when it exists (float64 torch tensors),
    else numpy_scan."""
    if use_naive_scan is None:
        use_naive_scan = naive_scan is not None
    outs, states = [], []
    for s in range(case.q.shape[0]):
        q, k, v, g, b, w, M = gathered_inputs(case, s)
        if use_naive_scan:
            o, M1 = _naive_scan_1thread(case.variant, q, k, v, g, b, w, M)
        else:
            o, M1 = numpy_scan(case.variant, q, k, v, g, b, w, M)
        outs.append(o)
        states.append(M1.transpose(0, 2, 1))
    return np.stack(outs), np.stack(states)


def _naive_scan_1thread(variant, q, k, v, g, b, w, M):
    """naive_scan on one torch thread: its ops are tiny, and on a busy 2-core machine
    torch's intra-op threads made the loop ~50x slower (measured)."""
    import torch

    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        o, M1 = naive_scan(variant, t(q), t(k), t(v), t(g), t(b), torch.from_numpy(w), t(M))
    finally:
        torch.set_num_threads(n)
    return o.double().numpy(), M1.double().numpy()


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """max |x - ref| / max |ref|: error relative to the tensor's scale (entries near zero
    would make an element-wise relative error meaningless)."""
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return float(np.max(np.abs(np.asarray(x, np.float64) - ref))) / max(scale, 1e-30) if ref.size else 0.0
