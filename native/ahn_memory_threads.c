/*
 * ahn_memory_threads.c - ahn_memory_step on n POSIX threads (standalone use only).
 */
#include "ahn_memory_threads.h"

#include <pthread.h>
#include <string.h>

#define AHN_MAX_THREADS 256

struct job {
    const char *                   name;  /* NULL: ahn_memory_step */
    const struct ahn_memory_args * args;
    int                            ith, nth;
    int                            rc;
};

static void run_job(struct job * j) {
    if (j->name == NULL) {
        ahn_memory_step(j->args, j->ith, j->nth);
        j->rc = 0;
    } else {
        j->rc = ahn_memory_step_named(j->name, j->args, j->ith, j->nth);
    }
}

static void * thread_main(void * p) {
    run_job((struct job *) p);
    return NULL;
}

int ahn_memory_step_threads(const char * name, const struct ahn_memory_args * args, int n_threads) {
    if (name && strcmp(name, "auto") == 0) name = NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > AHN_MAX_THREADS) n_threads = AHN_MAX_THREADS;

    struct job jobs[AHN_MAX_THREADS];
    pthread_t  tids[AHN_MAX_THREADS];
    int started[AHN_MAX_THREADS];
    for (int i = 0; i < n_threads; i++) {
        jobs[i] = (struct job) { name, args, i, n_threads, 0 };
        started[i] = 0;
    }
    int rc = 0;
    for (int i = 1; i < n_threads; i++) {
        started[i] = pthread_create(&tids[i], NULL, thread_main, &jobs[i]) == 0;
        if (!started[i]) run_job(&jobs[i]); /* keep the result whole: do its share here */
    }
    run_job(&jobs[0]);
    for (int i = 1; i < n_threads; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
    }
    for (int i = 0; i < n_threads; i++) {
        if (jobs[i].rc != 0 && rc == 0) rc = jobs[i].rc;
    }
    return rc;
}
