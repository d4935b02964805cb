/*
 * ahn_memory_avx512.c - the AHN memory step with AVX-512 (F/BW/VL), d = 64 and 128.
 *
 * Compile with: -mavx512f -mavx512bw -mavx512vl -mfma -mf16c (the AVX-512 F16 conversion
 * _mm512_cvtph_ps is AVX512F). Without those flags this file defines a stub returning -1.
 * The algorithm is in ahn_memory_simd_loop.h; this file maps it to 16-float vectors.
 */
#include "ahn_memory_common.h"
#include "ahn_memory_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

#include <immintrin.h>

#define AHN_V               __m512
#define AHN_VL              16
#define ahn_v_load(p)       _mm512_loadu_ps(p)
#define ahn_v_store(p, x)   _mm512_storeu_ps((p), (x))
#define ahn_v_set1(x)       _mm512_set1_ps(x)
#define ahn_v_zero()        _mm512_setzero_ps()
#define ahn_v_add(a, b)     _mm512_add_ps((a), (b))
#define ahn_v_mul(a, b)     _mm512_mul_ps((a), (b))
#define ahn_v_fma(a, b, c)  _mm512_fmadd_ps((a), (b), (c))

static inline float ahn_v_hsum(__m512 x) {
    /* 512 -> 256 -> 128 -> scalar: fewer shuffles than _mm512_reduce_add_ps on some compilers */
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

static inline void ahn_f16_row(const uint16_t * src, float * dst, int n) {
    for (int i = 0; i < n; i += 16) {
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (src + i))));
    }
}

#define AHN_SIMD_ENTRY ahn_memory_step_avx512
#include "ahn_memory_simd_loop.h"

#else

int ahn_memory_step_avx512(const struct ahn_memory_args * args, int ith, int nth) {
    (void) args; (void) ith; (void) nth;
    return -1; /* not compiled with AVX-512 */
}

#endif
