/*
 * ahn_memory_check.h - the layout checks of ahn_memory_args, header-only so that every consumer
 * runs the same ones: ahn_memory_check_args (ahn_memory.c, which adds the data pointers),
 * ahn_memory_cuda_supported (cuda/ahn_memory_cuda.cuh) and the ggml adapters, which check a node
 * when the scheduler asks whether a backend supports it, before its tensors have memory.
 */
#ifndef AHN_MEMORY_CHECK_H
#define AHN_MEMORY_CHECK_H

#include "ahn_memory.h"

#include <stddef.h>
#include <stdint.h>

static inline int ahn_is_multiple(size_t x, size_t of) { return x % of == 0; }

static inline size_t ahn_dtype_size(int32_t type) {
    return type == AHN_DTYPE_F16 ? 2 : type == AHN_DTYPE_F32 ? 4 : 0;
}

/* Shapes, types, strides, and the alignment of the data pointers that are set (NULL ones are not
 * checked: before allocation a node has none). Returns NULL if valid, else a static message. */
static inline const char * ahn_memory_check_layout(const struct ahn_memory_args * a) {
    if (!a) return "args is NULL";
    if (a->variant != AHN_VARIANT_GDN && a->variant != AHN_VARIANT_DN && a->variant != AHN_VARIANT_MAMBA2) {
        return "unknown variant";
    }
    if (a->d < 1 || a->d > AHN_MAX_D) return "head dim d must be in 1..256";
    if (a->n_head < 1 || a->n_head_kv < 1) return "n_head and n_head_kv must be >= 1";
    if (a->n_head % a->n_head_kv != 0) return "n_head must be a multiple of n_head_kv";
    if (a->n_tokens < 0 || a->n_seqs < 0) return "n_tokens and n_seqs must be >= 0";
    if (a->kv_size < 1) return "kv_size must be >= 1";
    const size_t k_el = ahn_dtype_size(a->k_type), v_el = ahn_dtype_size(a->v_type);
    if (!k_el || !v_el) return "K and V must be F32 or F16";
    const size_t g_el = ahn_dtype_size(a->gates_type);
    if (!g_el) return "the gates must be F32 or F16";
    if ((size_t) a->n_tokens * (size_t) a->n_seqs == 0) return NULL; /* nothing to do, nothing read */

    for (int i = 0; i < 4; i++) {
        if (a->k_nb[i] == 0 || !ahn_is_multiple(a->k_nb[i], k_el)) return "K strides must be non-zero multiples of the element size";
        if (a->v_nb[i] == 0 || !ahn_is_multiple(a->v_nb[i], v_el)) return "V strides must be non-zero multiples of the element size";
    }
    if (!ahn_is_multiple((size_t) a->k, k_el) || !ahn_is_multiple((size_t) a->v, v_el)) return "K / V are not aligned to their element size";
    for (int i = 0; i < 3; i++) {
        if (a->gates_nb[i] == 0 || !ahn_is_multiple(a->gates_nb[i], g_el)) return "gate strides must be non-zero multiples of the element size";
    }
    if (a->q_nb[0] != sizeof(float)) return "q dims must be contiguous (q_nb[0] == 4)";
    for (int i = 1; i < 4; i++) {
        if (!ahn_is_multiple(a->q_nb[i], sizeof(float))) return "q strides must be multiples of 4";
    }
    if (!ahn_is_multiple((size_t) a->gates, g_el)) return "the gates are not aligned to their element size";
    if (!ahn_is_multiple((size_t) a->q, 4) || !ahn_is_multiple((size_t) a->state, 4) ||
        !ahn_is_multiple((size_t) a->out, 4) || !ahn_is_multiple((size_t) a->idx, 4)) {
        return "q, state, out and idx must be 4-byte aligned";
    }
    return NULL;
}

#endif /* AHN_MEMORY_CHECK_H */
