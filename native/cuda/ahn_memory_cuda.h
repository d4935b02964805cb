/*
 * ahn_memory_cuda.h - C API of the standalone CUDA library (ahn_memory_cuda.cu), used by
 * the Python binding's tests and benchmarks. llama.cpp includes ahn_memory_cuda.cuh instead.
 */
#ifndef AHN_MEMORY_CUDA_H
#define AHN_MEMORY_CUDA_H

#include "../ahn_memory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One memory step; every pointer in args is a device pointer; stream is a cudaStream_t
 * (NULL: the default stream). Returns 0 once enqueued, -2 if the kernel cannot handle
 * args (d not 64/128, misaligned state), else a cudaError_t number. */
int ahn_memory_step_cuda(const struct ahn_memory_args * args, void * stream);

/* Mean milliseconds of one step over n_iter launches (after one warm-up); < 0 on error.
 * The device state advances n_iter + 1 times. */
float ahn_memory_time_cuda(const struct ahn_memory_args * args, int n_iter);

/* Just enough of the runtime for a test to move numpy arrays (0 / NULL on failure). */
int          ahn_cuda_device_count(void);
void *       ahn_cuda_alloc(size_t n_bytes);
int          ahn_cuda_free(void * ptr);
int          ahn_cuda_upload(void * dst_device, const void * src_host, size_t n_bytes);
int          ahn_cuda_download(void * dst_host, const void * src_device, size_t n_bytes);
int          ahn_cuda_synchronize(void);
const char * ahn_cuda_error_string(int err);

#ifdef __cplusplus
}
#endif

#endif /* AHN_MEMORY_CUDA_H */
