/*
 * ahn_memory_simd_loop.h - the AHN memory step, written once for every SIMD kernel.
 *
 * Included by ahn_memory_{avx2,avx512,neon}.c after they map these names to their
 * instruction set (so the algorithm lives here and each file holds only its mapping):
 *
 *   AHN_V                vector of AHN_VL floats
 *   ahn_v_load(p)        aligned-enough load (p is AHN_VL*4-byte aligned for buffers,
 *                        only 4-byte aligned for state rows: use unaligned loads)
 *   ahn_v_store(p, x)    store, same alignment rule
 *   ahn_v_set1(x), ahn_v_zero(), ahn_v_add(a, b), ahn_v_mul(a, b)
 *   ahn_v_fma(a, b, c)   a*b + c
 *   ahn_v_hsum(x)        sum of the lanes
 *   ahn_f16_row(src, dst, n)   n contiguous halves -> floats (n a multiple of AHN_VL)
 *   AHN_SIMD_ENTRY       name of the exported kernel function
 *
 * Why the row update looks the way it does: the state is stored transposed, so row j is
 * value dim j and rows are independent. For GDN/DN, with decay e, a = row.k^, b = row.q^
 * and kq = k^.q^ (all on the old row):
 *   c_j   = beta (v_j - e a)                 (the delta rule on the decayed row)
 *   row' = e row + c_j k^
 *   o_j   = scale row'.q^ = scale (e b + c_j kq)
 * so one read-only pass gives both dots, one read-modify-write pass updates the row, and
 * both passes hit the same d floats while they are in L1: each token streams the state
 * through memory once. Mamba2 is the same with c_j = dt v_j (no dot with k^ needed).
 */
#ifndef AHN_SIMD_ENTRY
#error "define the SIMD mapping before including ahn_memory_simd_loop.h"
#endif

#if defined(_MSC_VER)
#define AHN_FORCE_INLINE static __forceinline
#else
#define AHN_FORCE_INLINE static inline __attribute__((always_inline))
#endif

AHN_FORCE_INLINE float simd_dot(const float * x, const float * y, const int D) {
    AHN_V acc0 = ahn_v_zero(), acc1 = ahn_v_zero();
    for (int i = 0; i < D; i += 2 * AHN_VL) {
        acc0 = ahn_v_fma(ahn_v_load(x + i), ahn_v_load(y + i), acc0);
        acc1 = ahn_v_fma(ahn_v_load(x + i + AHN_VL), ahn_v_load(y + i + AHN_VL), acc1);
    }
    return ahn_v_hsum(ahn_v_add(acc0, acc1));
}

AHN_FORCE_INLINE void simd_scale(float * x, float s, const int D) {
    const AHN_V sv = ahn_v_set1(s);
    for (int i = 0; i < D; i += AHN_VL) ahn_v_store(x + i, ahn_v_mul(ahn_v_load(x + i), sv));
}

/* one K or V row of the window cache -> F32 buffer; contiguous rows take the fast path,
 * strided ones (a transposed V cache) the portable gather */
AHN_FORCE_INLINE void load_cache_row(const char * src, int type, size_t nb0, float * dst, const int D) {
    if (type == AHN_DTYPE_F16 && nb0 == sizeof(uint16_t)) {
        ahn_f16_row((const uint16_t *) src, dst, D);
    } else if (type == AHN_DTYPE_F32 && nb0 == sizeof(float)) {
        memcpy(dst, src, (size_t) D * sizeof(float));
    } else {
        ahn_load_row_scalar(src, type, nb0, D, dst);
    }
}

/* GDN / DN write + read, all d rows of one head's state (see the header comment).
 * k^ and q^ are loaded into vector variables once per token; where the instruction set has
 * enough registers (AVX-512: 32) they stay there for all d rows, elsewhere the compiler
 * keeps them on the stack, which costs the same L1 loads as reading the buffers. */
AHN_FORCE_INLINE void rows_write_delta(float * restrict M, const float * restrict kn, const float * restrict qn,
                                       const float * restrict vv, float decay, float beta, float kq, float scale,
                                       float * restrict o, const int D) {
    enum { NV = AHN_MAX_D / AHN_VL };
    AHN_V K[NV], Q[NV];
    for (int i = 0; i < D / AHN_VL; i++) { K[i] = ahn_v_load(kn + i * AHN_VL); Q[i] = ahn_v_load(qn + i * AHN_VL); }
    const AHN_V ev = ahn_v_set1(decay);
    for (int j = 0; j < D; j++) {
        float * restrict row = M + (size_t) j * D;
        AHN_V a0 = ahn_v_zero(), a1 = ahn_v_zero(), b0 = ahn_v_zero(), b1 = ahn_v_zero();
        for (int i = 0; i < D / AHN_VL; i += 2) {
            const AHN_V r0 = ahn_v_load(row + i * AHN_VL), r1 = ahn_v_load(row + (i + 1) * AHN_VL);
            a0 = ahn_v_fma(r0, K[i], a0);
            a1 = ahn_v_fma(r1, K[i + 1], a1);
            b0 = ahn_v_fma(r0, Q[i], b0);
            b1 = ahn_v_fma(r1, Q[i + 1], b1);
        }
        const float a = ahn_v_hsum(ahn_v_add(a0, a1));
        const float b = ahn_v_hsum(ahn_v_add(b0, b1));
        const float c = beta * (vv[j] - decay * a);
        o[j] = scale * (decay * b + c * kq);
        const AHN_V cv = ahn_v_set1(c);
        for (int i = 0; i < D / AHN_VL; i++) {
            ahn_v_store(row + i * AHN_VL, ahn_v_fma(cv, K[i], ahn_v_mul(ahn_v_load(row + i * AHN_VL), ev)));
        }
    }
}

/* Mamba2 write + read: row' = e row + dt v_j k^, o_j = scale (e row.q^ + dt v_j kq) */
AHN_FORCE_INLINE void rows_write_mamba2(float * restrict M, const float * restrict kn, const float * restrict qn,
                                        const float * restrict vv, float decay, float dt, float kq, float scale,
                                        float * restrict o, const int D) {
    enum { NV = AHN_MAX_D / AHN_VL };
    AHN_V K[NV], Q[NV];
    for (int i = 0; i < D / AHN_VL; i++) { K[i] = ahn_v_load(kn + i * AHN_VL); Q[i] = ahn_v_load(qn + i * AHN_VL); }
    const AHN_V ev = ahn_v_set1(decay);
    for (int j = 0; j < D; j++) {
        float * restrict row = M + (size_t) j * D;
        AHN_V b0 = ahn_v_zero(), b1 = ahn_v_zero();
        for (int i = 0; i < D / AHN_VL; i += 2) {
            b0 = ahn_v_fma(ahn_v_load(row + i * AHN_VL), Q[i], b0);
            b1 = ahn_v_fma(ahn_v_load(row + (i + 1) * AHN_VL), Q[i + 1], b1);
        }
        const float b = ahn_v_hsum(ahn_v_add(b0, b1));
        const float c = dt * vv[j];
        o[j] = scale * (decay * b + c * kq);
        const AHN_V cv = ahn_v_set1(c);
        for (int i = 0; i < D / AHN_VL; i++) {
            ahn_v_store(row + i * AHN_VL, ahn_v_fma(cv, K[i], ahn_v_mul(ahn_v_load(row + i * AHN_VL), ev)));
        }
    }
}

/* read only (no token evicted): o_j = scale row_j.q^ */
AHN_FORCE_INLINE void rows_read(const float * restrict M, const float * restrict qn, float scale,
                                float * restrict o, const int D) {
    for (int j = 0; j < D; j++) o[j] = scale * simd_dot(M + (size_t) j * D, qn, D);
}

/* all tokens of one (sequence, head) work unit */
AHN_FORCE_INLINE void unit_tokens(const struct ahn_memory_args * a, int s, int h, const int D) {
    AHN_ALIGN64 float kn[AHN_MAX_D];
    AHN_ALIGN64 float vv[AHN_MAX_D];
    AHN_ALIGN64 float qn[AHN_MAX_D];
    const int g = h / (a->n_head / a->n_head_kv);   /* repeat-interleave of KV heads */
    const float scale = ahn_readout_scale(a->variant, D);
    float * M = ahn_state_of(a, s, h);

    for (int t = 0; t < a->n_tokens; t++) {
        memcpy(qn, ahn_query(a, s, t, h), (size_t) D * sizeof(float));
        simd_scale(qn, ahn_inv_norm(a->variant, simd_dot(qn, qn, D)), D);
        float * o = ahn_out_of(a, s, t, h);

        const int64_t r = a->idx[(size_t) s * a->n_tokens + t];
        if (r < 0) {
            rows_read(M, qn, scale, o, D);
            continue;
        }
        load_cache_row(ahn_cache_row(a->k, a->k_nb, a->kv_size, r, g), a->k_type, a->k_nb[0], kn, D);
        load_cache_row(ahn_cache_row(a->v, a->v_nb, a->kv_size, r, g), a->v_type, a->v_nb[0], vv, D);
        simd_scale(kn, ahn_inv_norm(a->variant, simd_dot(kn, kn, D)), D);
        const float kq = simd_dot(kn, qn, D);
        float decay, b;
        ahn_write_gates(a, r, h, &decay, &b);
        if (a->variant == AHN_VARIANT_MAMBA2) {
            rows_write_mamba2(M, kn, qn, vv, decay, b, kq, scale, o, D);
        } else {
            rows_write_delta(M, kn, qn, vv, decay, b, kq, scale, o, D);
        }
    }
}

/* one instantiation per supported head dim, so every inner loop has a constant trip count */
static void step_d64(const struct ahn_memory_args * a, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; u++) unit_tokens(a, (int) (u / a->n_head), (int) (u % a->n_head), 64);
}

static void step_d128(const struct ahn_memory_args * a, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; u++) unit_tokens(a, (int) (u / a->n_head), (int) (u % a->n_head), 128);
}

int AHN_SIMD_ENTRY(const struct ahn_memory_args * a, int ith, int nth) {
    if (a->d != 64 && a->d != 128) return -2;
    int64_t u0, u1;
    ahn_thread_share(a, ith, nth, &u0, &u1);
    if (a->d == 64) step_d64(a, u0, u1); else step_d128(a, u0, u1);
    return 0;
}
