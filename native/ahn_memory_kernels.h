/*
 * ahn_memory_kernels.h - the per-instruction-set kernels behind ahn_memory_step (internal).
 *
 * Each lives in its own file, compiled with its own flags. Compiled without those flags
 * (or on another architecture) a file still defines its function, which then returns -1,
 * so the dispatcher can always link all of them. They handle d = 64 and 128 and return
 * -2 for any other d without touching anything; the dispatcher then uses the scalar kernel.
 */
#ifndef AHN_MEMORY_KERNELS_H
#define AHN_MEMORY_KERNELS_H

#include "ahn_memory.h"

#ifdef __cplusplus
extern "C" {
#endif

int ahn_memory_step_avx2  (const struct ahn_memory_args * args, int ith, int nth);  /* AVX2 + FMA + F16C */
int ahn_memory_step_avx512(const struct ahn_memory_args * args, int ith, int nth);  /* AVX-512 F/BW/VL */
int ahn_memory_step_neon  (const struct ahn_memory_args * args, int ith, int nth);  /* aarch64 NEON */

#ifdef __cplusplus
}
#endif

#endif /* AHN_MEMORY_KERNELS_H */
