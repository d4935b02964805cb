/*
 * ahn_memory_cuda.cu - standalone C wrapper around ahn_memory_cuda.cuh, for tests and
 * benchmarks (the Python binding loads it). Not part of the llama.cpp build.
 */
#include "ahn_memory_cuda.cuh"
#include "ahn_memory_cuda.h"

extern "C" int ahn_memory_step_cuda(const struct ahn_memory_args * a, void * stream) {
    if (!ahn_memory_cuda_supported(*a)) return -2;
    ahn_memory_launch_cuda(*a, static_cast<cudaStream_t>(stream));
    return static_cast<int>(cudaGetLastError());
}

extern "C" float ahn_memory_time_cuda(const struct ahn_memory_args * a, int n_iter) {
    if (!ahn_memory_cuda_supported(*a) || n_iter < 1) return -2.0f;
    cudaEvent_t start, stop;
    if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) return -1.0f;
    ahn_memory_launch_cuda(*a, 0);  // warm-up
    cudaEventRecord(start, 0);
    for (int i = 0; i < n_iter; i++) ahn_memory_launch_cuda(*a, 0);
    cudaEventRecord(stop, 0);
    float ms = -1.0f;
    if (cudaEventSynchronize(stop) == cudaSuccess && cudaGetLastError() == cudaSuccess) {
        cudaEventElapsedTime(&ms, start, stop);
        ms /= n_iter;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms;
}

extern "C" int ahn_cuda_device_count(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

extern "C" void * ahn_cuda_alloc(size_t n_bytes) {
    void * p = nullptr;
    return cudaMalloc(&p, n_bytes) == cudaSuccess ? p : nullptr;
}

extern "C" int ahn_cuda_free(void * ptr) {
    return static_cast<int>(cudaFree(ptr));
}

extern "C" int ahn_cuda_upload(void * dst_device, const void * src_host, size_t n_bytes) {
    return static_cast<int>(cudaMemcpy(dst_device, src_host, n_bytes, cudaMemcpyHostToDevice));
}

extern "C" int ahn_cuda_download(void * dst_host, const void * src_device, size_t n_bytes) {
    return static_cast<int>(cudaMemcpy(dst_host, src_device, n_bytes, cudaMemcpyDeviceToHost));
}

extern "C" int ahn_cuda_synchronize(void) {
    return static_cast<int>(cudaDeviceSynchronize());
}

extern "C" const char * ahn_cuda_error_string(int err) {
    return cudaGetErrorString(static_cast<cudaError_t>(err));
}
