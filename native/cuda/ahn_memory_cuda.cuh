/*
 * ahn_memory_cuda.cuh - the AHN memory step on CUDA (header-only; no ggml dependency).
 *
 * Same contract as ../ahn_memory.h, with every pointer in the args struct a DEVICE
 * pointer. Handles d = 64 and 128, the three variants, F32 / F16 K and V with any
 * strides (a transposed V cache included). Check ahn_memory_cuda_supported() first
 * (ggml: in supports_op); then ahn_memory_launch_cuda() enqueues one kernel on a stream.
 *
 * Design. The state is stored transposed (row j = value dim j), so the d rows of one
 * head are independent given k^, q^ and v_j. A block owns ROWS = 16 rows of one
 * (sequence, head) state and keeps them in registers for the whole call: the state is
 * read once and written once per call, however many tokens it holds. Each row is spread
 * over L = d/16 consecutive lanes, 16 floats (four float4) per thread, interleaved so
 * that one float4 load of a warp covers whole 64/128-byte row segments (coalesced).
 * blockDim = ROWS * L = d. Per token the block stages raw q, k (and its 16 v_j) in
 * shared memory (double-buffered: one __syncthreads per token, and the next token's
 * global loads are issued before this token's arithmetic). Every warp computes the
 * norms itself from shared memory, which costs a few shuffles and saves a barrier.
 * With a = row.k, b = row.q on the old row (unnormalised k, q; norms applied after):
 *   GDN/DN:  c_j = beta (v_j - e a^),  row' = e row + c_j k^,  o_j = scale (e b^ + c_j k^.q^)
 *   Mamba2:  c_j = dt v_j,             the same update and readout
 * Grid: (d / ROWS, n_head, n_seqs).
 */
#pragma once

#include "../ahn_memory.h"
#include "../ahn_memory_check.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace ahn_cuda {

constexpr int ROWS = 16;  // state rows per block; blockDim = ROWS * d/16 = d

__device__ __forceinline__ float load_elem(const char * p, int32_t type) {
    if (type == AHN_DTYPE_F16) {
        return __half2float(*reinterpret_cast<const __half *>(p));
    }
    return *reinterpret_cast<const float *>(p);
}

// (dim 0, kv head g) of window-cache row r = stream * kv_size + cell
__device__ __forceinline__ const char * cache_row(const void * base, const size_t * nb, int64_t kv_size, int64_t r, int g) {
    const int64_t u = r / kv_size;
    const int64_t c = r - u * kv_size;
    return static_cast<const char *>(base) + (size_t) u * nb[3] + (size_t) c * nb[2] + (size_t) g * nb[1];
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

template <int VARIANT>
__device__ __forceinline__ float inv_norm(float sumsq) {
    if (VARIANT == AHN_VARIANT_MAMBA2) {
        return 1.0f / fmaxf(sqrtf(sumsq), 1e-12f);   // torch F.normalize
    }
    return 1.0f / sqrtf(sumsq + 1e-6f);              // fla l2norm, eps inside the sqrt
}

// what one thread fetches from global memory for one token
struct token_inputs {
    int64_t r;      // evicted row, < 0 if none
    float   q, k;   // element tid of q and of the evicted k row
    float   v;      // v_{j0 + tid} for tid < ROWS
    float   decay;  // exp(g) (1 for DN)
    float   b;      // beta or dt
};

template <int D, int VARIANT>
__device__ __forceinline__ token_inputs fetch_token(const ahn_memory_args & a, int s, int t, int h, int g, int j0, int tid) {
    token_inputs in;
    in.r = a.idx[(size_t) s * a.n_tokens + t];
    const char * qrow = reinterpret_cast<const char *>(a.q) + (size_t) s * a.q_nb[3] + (size_t) t * a.q_nb[2] + (size_t) h * a.q_nb[1];
    in.q = reinterpret_cast<const float *>(qrow)[tid];
    in.k = 0.0f; in.v = 0.0f; in.decay = 1.0f; in.b = 0.0f;
    if (in.r >= 0) {
        in.k = load_elem(cache_row(a.k, a.k_nb, a.kv_size, in.r, g) + (size_t) tid * a.k_nb[0], a.k_type);
        if (tid < ROWS) {
            in.v = load_elem(cache_row(a.v, a.v_nb, a.kv_size, in.r, g) + (size_t) (j0 + tid) * a.v_nb[0], a.v_type);
        }
        const int64_t u = in.r / a.kv_size;
        const int64_t c = in.r - u * a.kv_size;
        const char * grow = reinterpret_cast<const char *>(a.gates) + (size_t) u * a.gates_nb[2] + (size_t) c * a.gates_nb[1];
        if (VARIANT == AHN_VARIANT_DN) {
            in.b = load_elem(grow + (size_t) h * a.gates_nb[0], a.gates_type);
        } else {
            in.decay = expf(load_elem(grow + (size_t) h * a.gates_nb[0], a.gates_type));
            in.b = load_elem(grow + (size_t) (h + a.n_head) * a.gates_nb[0], a.gates_type);
        }
    }
    return in;
}

template <int D, int VARIANT>
__global__ void __launch_bounds__(D) memory_step_kernel(const ahn_memory_args a) {
    constexpr int L = D / 16;  // lanes per state row (8 for d = 128, 4 for d = 64)
    static_assert(ROWS * L == D, "blockDim must equal d");
    const int tid = threadIdx.x;
    const int rl  = tid / L;                 // row within the block
    const int p   = tid % L;                 // lane within the row
    const int h   = blockIdx.y;
    const int s   = blockIdx.z;
    const int j0  = blockIdx.x * ROWS;
    const int j   = j0 + rl;                 // the value dim this thread's row holds
    const int g   = h / (a.n_head / a.n_head_kv);
    const int T   = a.n_tokens;
    const float scale = VARIANT == AHN_VARIANT_MAMBA2 ? 1.0f : 1.0f / sqrtf((float) D);

    __shared__ __align__(16) float q_sh[2][D];
    __shared__ __align__(16) float k_sh[2][D];
    __shared__ float v_sh[2][ROWS];

    // this thread's 16 state floats: float4 number c*L + p of row j, c = 0..3
    float4 * row = reinterpret_cast<float4 *>(a.state + (((size_t) s * a.n_head + h) * D + j) * D);
    float4 st[4];
#pragma unroll
    for (int c = 0; c < 4; c++) st[c] = row[c * L + p];

    token_inputs cur = fetch_token<D, VARIANT>(a, s, 0, h, g, j0, tid);
    q_sh[0][tid] = cur.q; k_sh[0][tid] = cur.k;
    if (tid < ROWS) v_sh[0][tid] = cur.v;
    __syncthreads();

    for (int t = 0; t < T; t++) {
        const int buf = t & 1;
        token_inputs next;
        if (t + 1 < T) next = fetch_token<D, VARIANT>(a, s, t + 1, h, g, j0, tid);  // in flight during the math below
        const bool write = cur.r >= 0;

        // norms of q, k and k.q, each warp for itself
        float sq = 0.0f, sk = 0.0f, skq = 0.0f;
#pragma unroll
        for (int i = tid % 32; i < D; i += 32) {
            const float qq = q_sh[buf][i], kk = k_sh[buf][i];
            sq += qq * qq; sk += kk * kk; skq += kk * qq;
        }
        sq = warp_sum(sq);
        const float inv_q = inv_norm<VARIANT>(sq);

        // row . k and row . q over this thread's 16 floats, then over the row's L lanes
        const float4 * k4 = reinterpret_cast<const float4 *>(k_sh[buf]);
        const float4 * q4 = reinterpret_cast<const float4 *>(q_sh[buf]);
        float dk = 0.0f, dq = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            const float4 kk = k4[c * L + p], qq = q4[c * L + p];
            dk += st[c].x * kk.x + st[c].y * kk.y + st[c].z * kk.z + st[c].w * kk.w;
            dq += st[c].x * qq.x + st[c].y * qq.y + st[c].z * qq.z + st[c].w * qq.w;
        }
#pragma unroll
        for (int off = L / 2; off > 0; off >>= 1) {
            dk += __shfl_xor_sync(0xffffffffu, dk, off);
            dq += __shfl_xor_sync(0xffffffffu, dq, off);
        }

        float o;
        if (write) {
            sk = warp_sum(sk);
            skq = warp_sum(skq);
            const float inv_k = inv_norm<VARIANT>(sk);
            const float kq = skq * inv_k * inv_q;   // k^ . q^
            const float e = cur.decay;
            const float vj = v_sh[buf][rl];
            const float cj = VARIANT == AHN_VARIANT_MAMBA2 ? cur.b * vj : cur.b * (vj - e * dk * inv_k);
            o = scale * (e * dq * inv_q + cj * kq);
            const float ck = cj * inv_k;            // c_j k^ = (c_j / |k|) k
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const float4 kk = k4[c * L + p];
                st[c].x = e * st[c].x + ck * kk.x;
                st[c].y = e * st[c].y + ck * kk.y;
                st[c].z = e * st[c].z + ck * kk.z;
                st[c].w = e * st[c].w + ck * kk.w;
            }
        } else {
            o = scale * dq * inv_q;
        }
        if (p == 0) a.out[(((size_t) s * T + t) * a.n_head + h) * D + j] = o;

        if (t + 1 < T) {
            q_sh[buf ^ 1][tid] = next.q; k_sh[buf ^ 1][tid] = next.k;
            if (tid < ROWS) v_sh[buf ^ 1][tid] = next.v;
            cur = next;
        }
        __syncthreads();
    }

#pragma unroll
    for (int c = 0; c < 4; c++) row[c * L + p] = st[c];
}

}  // namespace ahn_cuda

// Can the CUDA kernel run these args? The common layout checks, then d, grid limits, and the
// float4 alignment of state (a NULL state, not yet allocated, passes: ggml aligns allocations)
static bool ahn_memory_cuda_supported(const ahn_memory_args & a) {
    return ahn_memory_check_layout(&a) == nullptr && (a.d == 64 || a.d == 128) && a.n_head <= 65535 && a.n_seqs <= 65535 &&
           a.variant >= AHN_VARIANT_GDN && a.variant <= AHN_VARIANT_MAMBA2 &&
           a.q_nb[0] == sizeof(float) && (reinterpret_cast<uintptr_t>(a.state) % 16) == 0;
}

// Enqueue one memory step on `stream`. All pointers in `a` are device pointers.
static void ahn_memory_launch_cuda(const ahn_memory_args & a, cudaStream_t stream) {
    if (a.n_tokens <= 0 || a.n_seqs <= 0) return;
    if (!ahn_memory_cuda_supported(a)) {
        fprintf(stderr, "ahn_memory_launch_cuda: unsupported args (d = %d); check ahn_memory_cuda_supported() first\n", a.d);
        abort();
    }
    const dim3 grid(a.d / ahn_cuda::ROWS, a.n_head, a.n_seqs);
#define AHN_LAUNCH(D, V) ahn_cuda::memory_step_kernel<D, V><<<grid, D, 0, stream>>>(a)
    if (a.d == 64) {
        switch (a.variant) {
            case AHN_VARIANT_GDN:    AHN_LAUNCH(64, AHN_VARIANT_GDN);    break;
            case AHN_VARIANT_DN:     AHN_LAUNCH(64, AHN_VARIANT_DN);     break;
            default:                 AHN_LAUNCH(64, AHN_VARIANT_MAMBA2); break;
        }
    } else {
        switch (a.variant) {
            case AHN_VARIANT_GDN:    AHN_LAUNCH(128, AHN_VARIANT_GDN);    break;
            case AHN_VARIANT_DN:     AHN_LAUNCH(128, AHN_VARIANT_DN);     break;
            default:                 AHN_LAUNCH(128, AHN_VARIANT_MAMBA2); break;
        }
    }
#undef AHN_LAUNCH
}
