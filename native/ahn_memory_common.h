/*
 * ahn_memory_common.h - small helpers shared by every CPU kernel of the AHN memory step.
 *
 * All static inline, so each kernel file compiles them with its own flags (a helper
 * used by the AVX-512 kernel may itself get vectorised with AVX-512). Nothing here
 * allocates; buffers are the caller's (stack arrays of AHN_MAX_D floats).
 */
#ifndef AHN_MEMORY_COMMON_H
#define AHN_MEMORY_COMMON_H

#include "ahn_memory.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* L2-norm epsilons (docs/AHN-SPEC.md): fla's l2norm puts 1e-6 inside the sqrt; torch F.normalize
 * (Mamba2) clamps the norm at 1e-12 */
#define AHN_L2_EPS_DELTA   1e-6f
#define AHN_L2_EPS_MAMBA2  1e-12f

#if defined(_MSC_VER)
#define AHN_ALIGN64 __declspec(align(64))
#else
#define AHN_ALIGN64 __attribute__((aligned(64)))
#endif

/* IEEE half -> float, exact, without any instruction-set help (the scalar and strided paths) */
static inline float ahn_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {                    /* inf / nan */
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {                 /* normal */
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {                /* signed zero */
        bits = sign;
    } else {                               /* subnormal half -> normal float */
        exp = 113u;
        while ((mant & 0x400u) == 0) { mant <<= 1; exp--; }
        bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* the work units (sequence, head) of thread ith out of nth: a contiguous share [*u0, *u1) */
static inline void ahn_thread_share(const struct ahn_memory_args * a, int ith, int nth, int64_t * u0, int64_t * u1) {
    const int64_t n_units = (int64_t) a->n_seqs * a->n_head;
    if (nth < 1) { nth = 1; ith = 0; }
    const int64_t per = (n_units + nth - 1) / nth;
    int64_t lo = per * ith;
    int64_t hi = lo + per;
    if (lo > n_units) lo = n_units;
    if (hi > n_units) hi = n_units;
    *u0 = lo;
    *u1 = hi;
}

/* address of (dim 0, kv head g) of window-cache row r (row = stream * kv_size + cell) */
static inline const char * ahn_cache_row(const void * base, const size_t nb[4], int64_t kv_size, int64_t r, int g) {
    const int64_t u = r / kv_size;
    const int64_t c = r % kv_size;
    return (const char *) base + (size_t) u * nb[3] + (size_t) c * nb[2] + (size_t) g * nb[1];
}

/* one element, F32 or F16, at any byte address -> float */
static inline float ahn_load_elem(const char * src, int type) {
    if (type == AHN_DTYPE_F16) {
        uint16_t h;
        memcpy(&h, src, sizeof h);
        return ahn_fp16_to_fp32(h);
    }
    float f;
    memcpy(&f, src, sizeof f);
    return f;
}

/* d elements, stride nb0 bytes, F32 or F16 -> dst (F32). The portable path; SIMD kernels
 * take their own route for contiguous rows and fall back to this for strided ones. */
static inline void ahn_load_row_scalar(const char * src, int type, size_t nb0, int d, float * dst) {
    if (type == AHN_DTYPE_F16) {
        for (int i = 0; i < d; i++) {
            uint16_t h;
            memcpy(&h, src + (size_t) i * nb0, sizeof h);
            dst[i] = ahn_fp16_to_fp32(h);
        }
    } else {
        for (int i = 0; i < d; i++) {
            memcpy(&dst[i], src + (size_t) i * nb0, sizeof(float));
        }
    }
}

/* 1 / norm for the variant's L2 normalisation, from the sum of squares */
static inline float ahn_inv_norm(int variant, float sumsq) {
    if (variant == AHN_VARIANT_MAMBA2) {
        const float n = sqrtf(sumsq);
        return 1.0f / (n > AHN_L2_EPS_MAMBA2 ? n : AHN_L2_EPS_MAMBA2);
    }
    return 1.0f / sqrtf(sumsq + AHN_L2_EPS_DELTA);
}

/* readout scale: GDN / DN d^-1/2, Mamba2 1 */
static inline float ahn_readout_scale(int variant, int d) {
    return variant == AHN_VARIANT_MAMBA2 ? 1.0f : 1.0f / sqrtf((float) d);
}

/* the write gates of head h for cache row r: decay = exp(g) (1 for DN), b = beta (GDN/DN) or dt (Mamba2) */
static inline void ahn_write_gates(const struct ahn_memory_args * a, int64_t r, int h, float * decay, float * b) {
    const int64_t u = r / a->kv_size;
    const int64_t c = r % a->kv_size;
    const char * row = (const char *) a->gates + (size_t) u * a->gates_nb[2] + (size_t) c * a->gates_nb[1];
    float g = 0.0f, bb;
    if (a->variant == AHN_VARIANT_DN) {
        bb = ahn_load_elem(row + (size_t) h * a->gates_nb[0], a->gates_type);
    } else {
        g  = ahn_load_elem(row + (size_t) h * a->gates_nb[0], a->gates_type);
        bb = ahn_load_elem(row + (size_t) (h + a->n_head) * a->gates_nb[0], a->gates_type);
    }
    *decay = a->variant == AHN_VARIANT_DN ? 1.0f : expf(g);
    *b = bb;
}

static inline const float * ahn_query(const struct ahn_memory_args * a, int s, int t, int h) {
    return (const float *) ((const char *) a->q + (size_t) s * a->q_nb[3] + (size_t) t * a->q_nb[2] + (size_t) h * a->q_nb[1]);
}

static inline float * ahn_state_of(const struct ahn_memory_args * a, int s, int h) {
    return a->state + ((size_t) s * a->n_head + h) * (size_t) a->d * a->d;
}

static inline float * ahn_out_of(const struct ahn_memory_args * a, int s, int t, int h) {
    return a->out + (((size_t) s * a->n_tokens + t) * a->n_head + h) * (size_t) a->d;
}

#endif /* AHN_MEMORY_COMMON_H */
