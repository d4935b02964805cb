/*
 * ahn_memory.c - runtime choice of the kernel, and the argument check (ahn_memory_check.h + pointers).
 *
 * The kernels (ahn_memory_scalar.c and one file per instruction set) are compiled
 * separately with their own flags; this file needs no special flags. The best kernel
 * for the running CPU is chosen once, at the first call, and reused.
 */
#include "ahn_memory.h"
#include "ahn_memory_check.h"
#include "ahn_memory_common.h"
#include "ahn_memory_kernels.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#define AHN_X86 1
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define AHN_ARM64 1
#endif

typedef int (*ahn_kernel_fn)(const struct ahn_memory_args *, int, int);

static int step_scalar(const struct ahn_memory_args * a, int ith, int nth) {
    ahn_memory_step_scalar(a, ith, nth);
    return 0;
}

#if defined(AHN_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

/* F16C from CPUID leaf 1 (ECX bit 29): clang < 16 has no "f16c" for __builtin_cpu_supports */
static int cpu_has_f16c(void) {
    unsigned int eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
#endif

/* does the running CPU have the instructions this kernel was compiled for? */
static int cpu_has(const char * name) {
    if (strcmp(name, "scalar") == 0) return 1;
#if defined(AHN_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    }
    if (strcmp(name, "avx512") == 0) {
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    }
#endif
#if defined(AHN_ARM64)
    if (strcmp(name, "neon") == 0) return 1; /* baseline on aarch64 */
#endif
    return 0;
}

struct ahn_kernel {
    const char *  name;
    ahn_kernel_fn fn;
};

/* best first; the scalar kernel last, as the fallback for every d */
static const struct ahn_kernel KERNELS[] = {
#if defined(AHN_X86)
    { "avx512", ahn_memory_step_avx512 },
    { "avx2",   ahn_memory_step_avx2   },
#endif
#if defined(AHN_ARM64)
    { "neon",   ahn_memory_step_neon   },
#endif
    { "scalar", step_scalar },
};
#define N_KERNELS ((int) (sizeof KERNELS / sizeof KERNELS[0]))

/* a kernel is usable if the CPU supports it and it was compiled in (a stub returns -1):
 * probe it with a step that has no work (n_seqs = 0, d = 64) */
static int kernel_usable(const struct ahn_kernel * k) {
    if (!cpu_has(k->name)) return 0;
    struct ahn_memory_args probe;
    memset(&probe, 0, sizeof probe);
    probe.d = 64; probe.n_head = 1; probe.n_head_kv = 1; probe.kv_size = 1;
    return k->fn(&probe, 0, 1) == 0;
}

/* chosen once; a race between first callers is harmless (they all pick the same one) */
static volatile int g_best = -1;

static int best_kernel(void) {
    int b = g_best;
    if (b < 0) {
        b = N_KERNELS - 1;
        for (int i = 0; i < N_KERNELS; i++) {
            if (kernel_usable(&KERNELS[i])) { b = i; break; }
        }
        g_best = b;
    }
    return b;
}

void ahn_memory_step(const struct ahn_memory_args * args, int ith, int nth) {
    if (KERNELS[best_kernel()].fn(args, ith, nth) != 0) {
        ahn_memory_step_scalar(args, ith, nth); /* a d the fast kernel does not handle */
    }
}

const char * ahn_memory_kernel_name(void) {
    return KERNELS[best_kernel()].name;
}

int ahn_memory_step_named(const char * name, const struct ahn_memory_args * args, int ith, int nth) {
    for (int i = 0; i < N_KERNELS; i++) {
        if (strcmp(KERNELS[i].name, name) == 0) {
            if (!kernel_usable(&KERNELS[i])) return -1;
            return KERNELS[i].fn(args, ith, nth) == 0 ? 0 : -2;
        }
    }
    return -1;
}

const char * ahn_memory_check_args(const struct ahn_memory_args * a) {
    const char * msg = ahn_memory_check_layout(a);
    if (msg) return msg;
    if ((size_t) a->n_tokens * (size_t) a->n_seqs == 0) return NULL; /* nothing to do, nothing read */
    if (!a->k || !a->v || !a->gates || !a->idx || !a->q || !a->state || !a->out) return "a data pointer is NULL";
    return NULL;
}
