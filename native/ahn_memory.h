/*
 * ahn_memory.h - the AHN memory step (ahn-gguf), one fused op for all three variants.
 *
 * One call processes n_tokens tokens of each of n_seqs sequences. For token t of
 * sequence s, in order:
 *
 *   1. write: if idx[s][t] >= 0, the token stored in window-cache row idx[s][t] has
 *      just left the window; fold it into the state of every AHN head h:
 *        k^ = l2norm(k[row, h / n_rep]),  v = v[row, h / n_rep]
 *        GDN/DN:  M <- exp(g) M ;  M <- M + k^ (beta (v - M^T k^))^T
 *        Mamba2:  M <- exp(g) M + dt k^ v^T
 *   2. read:  out[s][t][h] = scale * M^T l2norm(q[s][t][h])
 *
 * M is the d x d state of one head (key dim x value dim). It is stored TRANSPOSED,
 * exactly as ggml's GGML_OP_GATED_DELTA_NET and GGML_OP_SSM_SCAN store theirs:
 *   state[s][h][j][i] = M[i][j]     (i = key dim, contiguous; j = value dim)
 * so a row of the stored matrix is one value dimension, and every step above is
 * a per-row operation (scale, dot with k^, axpy with k^, dot with q^).
 *
 * L2 norms (docs/AHN-SPEC.md): GDN/DN  x / sqrt(sum x^2 + 1e-6)
 *                      Mamba2  x / max(||x||, 1e-12)       (torch F.normalize)
 * scale: GDN/DN 1/sqrt(d); Mamba2 1.
 *
 * Write gates live in a per-row gate cache (F32), computed from the hidden state of
 * the token when it entered the window:
 *   GDN    gate row = [ g_0 .. g_{H-1}, beta_0 .. beta_{H-1} ]   (g = log-decay <= 0)
 *   DN     gate row = [ beta_0 .. beta_{H-1} ]                   (no decay)
 *   Mamba2 gate row = [ g_0 .. g_{H-1}, dt_0 .. dt_{H-1} ]       (g = dt * A, A = -exp(A_log))
 *
 * Rows of the window cache: K and V hold n_stream * kv_size rows; a row index r
 * addresses stream r / kv_size, cell r % kv_size. Element (dim i, kv head g,
 * cell c, stream u) of K lives at
 *   (char *) k + u*k_nb[3] + c*k_nb[2] + g*k_nb[1] + i*k_nb[0]
 * and likewise for V, so a transposed V cache (llama.cpp without flash attention)
 * is just another set of strides.
 *
 * Threads: work units are the n_seqs * n_head (sequence, head) pairs; thread ith of
 * nth takes a contiguous share. No allocation happens inside a step.
 *
 * Head dims: every kernel accepts 1 <= d <= 256 (check_args rejects more: k^, q^ and v
 * live in fixed stack buffers). The SIMD kernels are unrolled for d = 64 and 128;
 * ahn_memory_step runs the scalar kernel for any other d.
 */
#ifndef AHN_MEMORY_H
#define AHN_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* largest head dim a kernel accepts: k^, q^ and v live in fixed stack buffers of this size */
#define AHN_MAX_D 256

enum ahn_variant {
    AHN_VARIANT_GDN    = 0,
    AHN_VARIANT_DN     = 1,
    AHN_VARIANT_MAMBA2 = 2,
};

enum ahn_dtype {
    AHN_DTYPE_F32 = 0,
    AHN_DTYPE_F16 = 1,
};

struct ahn_memory_args {
    int32_t variant;     /* enum ahn_variant */
    int32_t d;           /* head dim of k, v, q (S_k == S_v) */
    int32_t n_head;      /* H: AHN heads == query heads */
    int32_t n_head_kv;   /* H_kv: K/V heads in the cache; n_head % n_head_kv == 0 */
    int32_t n_tokens;    /* tokens per sequence in this step */
    int32_t n_seqs;      /* sequences in this step */
    int64_t kv_size;     /* cells per stream in the K/V/gate storage */

    /* window-cache K and V storage; nb[] are byte strides for (dim, kv head, cell, stream) */
    const void * k;      int32_t k_type;   size_t k_nb[4];
    const void * v;      int32_t v_type;   size_t v_nb[4];

    /* gate cache, F32 or F16 (ahn.memory_type): gate row of cell c, stream u at
     * (char *) gates + u*gates_nb[2] + c*gates_nb[1]; value number n of that row at + n*gates_nb[0]
     * (the element size when the row is contiguous) */
    const void * gates;  int32_t gates_type; size_t gates_nb[3];

    /* idx[s*n_tokens + t]: row (u*kv_size + c) of the token that query t of sequence s evicts, < 0 if none */
    const int32_t * idx;

    /* queries, F32, dims contiguous: q[s][t][h] at (char *) q + s*q_nb[3] + t*q_nb[2] + h*q_nb[1] */
    const float * q;     size_t q_nb[4];

    /* states, F32, contiguous [n_seqs][n_head][d][d] (transposed, see above); updated in place */
    float * state;

    /* readout, F32, contiguous [n_seqs][n_tokens][n_head][d] */
    float * out;
};

/* Best kernel for this CPU (chosen once, at first call, from cpuid / the build). */
void ahn_memory_step(const struct ahn_memory_args * args, int ith, int nth);

/* The plain scalar kernel: the obvious reference inside native/. Every d. */
void ahn_memory_step_scalar(const struct ahn_memory_args * args, int ith, int nth);

/* Name of the kernel ahn_memory_step uses: "scalar", "avx2", "avx512" or "neon". */
const char * ahn_memory_kernel_name(void);

/* Run a specific kernel by name; returns 0 on success, -1 if that kernel is not
 * compiled in or not supported by this CPU, -2 if it cannot handle args (e.g. d). */
int ahn_memory_step_named(const char * name, const struct ahn_memory_args * args, int ith, int nth);

/* Checks args for consistency (ahn_memory_check_layout of ahn_memory_check.h, then the data
 * pointers); returns NULL if valid, else a static message. */
const char * ahn_memory_check_args(const struct ahn_memory_args * args);

#ifdef __cplusplus
}
#endif

#endif /* AHN_MEMORY_H */
