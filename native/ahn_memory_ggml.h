/*
 * ahn_memory_ggml.h - ahn_memory_args from a GGML_OP_AHN_MEMORY node: the half of the ggml adapter
 * that the CPU (ggml-cpu/ahn-memory.cpp) and CUDA (ggml-cuda/ahn-memory.cu) backends of patch
 * 0001 share, so both read the node the same way. Needs ggml.h: it is used only inside llama.cpp's
 * tree, never by the standalone build of native/.
 *
 * The node (ggml_ahn_memory in ggml.c): src = q, k, v, gates, idx, state; op_params[0] = variant;
 * the result holds the readout [n_seqs][n_tokens][n_head][d] followed by the new states. The kernels
 * update args.state in place, so the adapter first copies the input states (src[5]) there.
 */
#ifndef AHN_MEMORY_GGML_H
#define AHN_MEMORY_GGML_H

#include "ahn_memory.h"
#include "ahn_memory_check.h"
#include "ggml.h"

#include <string.h>

/* Fills *a from the node. state_out: where the new states go, NULL for the node's own result
 * after the readout (a backend that fuses the write-back into the cache passes the cache).
 * Before the graph is allocated the data pointers are NULL; ahn_memory_check_layout accepts that.
 * Returns NULL, or why the node cannot be run (an unsupported K/V type, a bad layout). */
static inline const char * ahn_memory_args_from_node(const struct ggml_tensor * node, float * state_out,
                                                      struct ahn_memory_args * a) {
    const struct ggml_tensor * q     = node->src[0];
    const struct ggml_tensor * k     = node->src[1];
    const struct ggml_tensor * v     = node->src[2];
    const struct ggml_tensor * gates = node->src[3];
    const struct ggml_tensor * idx   = node->src[4];

    memset(a, 0, sizeof(*a));
    if ((k->type != GGML_TYPE_F32 && k->type != GGML_TYPE_F16) || (v->type != GGML_TYPE_F32 && v->type != GGML_TYPE_F16)) {
        return "K and V must be F32 or F16";
    }
    if (gates->type != GGML_TYPE_F32 && gates->type != GGML_TYPE_F16) {
        return "the gates must be F32 or F16";
    }
    a->variant   = ((const int32_t *) node->op_params)[0];
    a->d         = (int32_t) q->ne[0];
    a->n_head    = (int32_t) q->ne[1];
    a->n_head_kv = (int32_t) k->ne[1];
    a->n_tokens  = (int32_t) q->ne[2];
    a->n_seqs    = (int32_t) q->ne[3];
    a->kv_size   = k->ne[2];

    a->k = k->data; a->k_type = k->type == GGML_TYPE_F16 ? AHN_DTYPE_F16 : AHN_DTYPE_F32;
    a->v = v->data; a->v_type = v->type == GGML_TYPE_F16 ? AHN_DTYPE_F16 : AHN_DTYPE_F32;
    for (int i = 0; i < 4; ++i) {
        a->k_nb[i] = k->nb[i];
        a->v_nb[i] = v->nb[i];
        a->q_nb[i] = q->nb[i];
    }
    /* an F16 gate store (ahn.memory_type = f16) is read as it is: the kernels widen each value */
    a->gates = gates->data; a->gates_type = gates->type == GGML_TYPE_F16 ? AHN_DTYPE_F16 : AHN_DTYPE_F32;
    for (int i = 0; i < 3; ++i) {
        a->gates_nb[i] = gates->nb[i];
    }
    a->idx = (const int32_t *) idx->data;
    a->q   = (const float *) q->data;
    a->out = (float *) node->data;
    if (state_out != NULL) {
        a->state = state_out;
    } else if (node->data != NULL) {
        a->state = (float *) node->data + q->ne[0]*q->ne[1]*q->ne[2]*q->ne[3];
    }
    return ahn_memory_check_layout(a);
}

#endif /* AHN_MEMORY_GGML_H */
