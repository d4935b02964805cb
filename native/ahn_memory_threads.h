/*
 * ahn_memory_threads.h - run one AHN memory step on n threads (standalone use only).
 *
 * Inside llama.cpp the ggml thread pool calls ahn_memory_step(args, ith, nth) itself;
 * this helper is for the Python binding and benchmarks, which have no thread pool.
 */
#ifndef AHN_MEMORY_THREADS_H
#define AHN_MEMORY_THREADS_H

#include "ahn_memory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Runs kernel `name` ("auto" or NULL: ahn_memory_step) with ith = 0..n_threads-1 on
 * n_threads threads (the caller's thread is one of them) and waits for all.
 * Returns 0, or the first non-zero code of ahn_memory_step_named, or -3 if a thread
 * could not be started (the work is then done on the threads that did start). */
int ahn_memory_step_threads(const char * name, const struct ahn_memory_args * args, int n_threads);

#ifdef __cplusplus
}
#endif

#endif /* AHN_MEMORY_THREADS_H */
