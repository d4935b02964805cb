/*
 * ahn_memory_avx2.c - the AHN memory step with AVX2 + FMA + F16C, d = 64 and 128.
 *
 * Compile with: -mavx2 -mfma -mf16c. Without those flags this file defines a stub
 * returning -1. The algorithm is in ahn_memory_simd_loop.h; this file maps it to
 * 8-float vectors.
 */
#include "ahn_memory_common.h"
#include "ahn_memory_kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#define AHN_V               __m256
#define AHN_VL              8
#define ahn_v_load(p)       _mm256_loadu_ps(p)
#define ahn_v_store(p, x)   _mm256_storeu_ps((p), (x))
#define ahn_v_set1(x)       _mm256_set1_ps(x)
#define ahn_v_zero()        _mm256_setzero_ps()
#define ahn_v_add(a, b)     _mm256_add_ps((a), (b))
#define ahn_v_mul(a, b)     _mm256_mul_ps((a), (b))
#define ahn_v_fma(a, b, c)  _mm256_fmadd_ps((a), (b), (c))

static inline float ahn_v_hsum(__m256 x) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

static inline void ahn_f16_row(const uint16_t * src, float * dst, int n) {
    for (int i = 0; i < n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + i))));
    }
}

#define AHN_SIMD_ENTRY ahn_memory_step_avx2
#include "ahn_memory_simd_loop.h"

#else

int ahn_memory_step_avx2(const struct ahn_memory_args * args, int ith, int nth) {
    (void) args; (void) ith; (void) nth;
    return -1; /* not compiled with AVX2 + FMA + F16C */
}

#endif
