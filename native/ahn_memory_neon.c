/*
 * ahn_memory_neon.c - the AHN memory step with aarch64 NEON, d = 64 and 128.
 *
 * NEON (with fp16 <-> fp32 conversion) is baseline on aarch64: no flags needed. On any
 * other architecture this file defines a stub returning -1. The algorithm is in
 * ahn_memory_simd_loop.h; this file maps it to 4-float vectors.
 */
#include "ahn_memory_common.h"
#include "ahn_memory_kernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>

#define AHN_V               float32x4_t
#define AHN_VL              4
#define ahn_v_load(p)       vld1q_f32(p)
#define ahn_v_store(p, x)   vst1q_f32((p), (x))
#define ahn_v_set1(x)       vdupq_n_f32(x)
#define ahn_v_zero()        vdupq_n_f32(0.0f)
#define ahn_v_add(a, b)     vaddq_f32((a), (b))
#define ahn_v_mul(a, b)     vmulq_f32((a), (b))
#define ahn_v_fma(a, b, c)  vfmaq_f32((c), (a), (b))
#define ahn_v_hsum(x)       vaddvq_f32(x)

static inline void ahn_f16_row(const uint16_t * src, float * dst, int n) {
    for (int i = 0; i < n; i += 4) {
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    }
}

#define AHN_SIMD_ENTRY ahn_memory_step_neon
#include "ahn_memory_simd_loop.h"

#else

int ahn_memory_step_neon(const struct ahn_memory_args * args, int ith, int nth) {
    (void) args; (void) ith; (void) nth;
    return -1; /* not an aarch64 NEON build */
}

#endif
