/*
 * ahn_memory_scalar.c - the plain kernel: docs/AHN-SPEC.md written out loop by loop, any d <= 256.
 *
 * This is the reference inside native/: the SIMD and CUDA kernels are tested against it.
 * It does the write and the read as two separate passes over the state, exactly in the
 * order of the spec, and makes no algebraic shortcut.
 */
#include "ahn_memory_common.h"

static float dot(const float * x, const float * y, int d) {
    float s = 0.0f;
    for (int i = 0; i < d; i++) s += x[i] * y[i];
    return s;
}

static void normalise(int variant, float * x, int d) {
    const float inv = ahn_inv_norm(variant, dot(x, x, d));
    for (int i = 0; i < d; i++) x[i] *= inv;
}

void ahn_memory_step_scalar(const struct ahn_memory_args * a, int ith, int nth) {
    const int d = a->d;
    const int n_rep = a->n_head / a->n_head_kv;
    const float scale = ahn_readout_scale(a->variant, d);
    float kn[AHN_MAX_D], vv[AHN_MAX_D], qn[AHN_MAX_D];

    int64_t u0, u1;
    ahn_thread_share(a, ith, nth, &u0, &u1);
    for (int64_t unit = u0; unit < u1; unit++) {
        const int s = (int) (unit / a->n_head);
        const int h = (int) (unit % a->n_head);
        const int g = h / n_rep;               /* repeat-interleave: AHN head h reads KV head h / n_rep */
        float * M = ahn_state_of(a, s, h);     /* M[j*d + i] = SPEC M[i][j] */

        for (int t = 0; t < a->n_tokens; t++) {
            const int64_t r = a->idx[(size_t) s * a->n_tokens + t];
            if (r >= 0) {
                ahn_load_row_scalar(ahn_cache_row(a->k, a->k_nb, a->kv_size, r, g), a->k_type, a->k_nb[0], d, kn);
                ahn_load_row_scalar(ahn_cache_row(a->v, a->v_nb, a->kv_size, r, g), a->v_type, a->v_nb[0], d, vv);
                normalise(a->variant, kn, d);
                float decay, b;
                ahn_write_gates(a, r, h, &decay, &b);
                for (int j = 0; j < d; j++) {
                    float * row = M + (size_t) j * d;
                    for (int i = 0; i < d; i++) row[i] *= decay;
                    /* GDN/DN: delta_j = beta (v_j - (M^T k^)_j);  Mamba2: dt v_j */
                    const float c = a->variant == AHN_VARIANT_MAMBA2 ? b * vv[j] : b * (vv[j] - dot(row, kn, d));
                    for (int i = 0; i < d; i++) row[i] += c * kn[i];
                }
            }
            memcpy(qn, ahn_query(a, s, t, h), (size_t) d * sizeof(float));
            normalise(a->variant, qn, d);
            float * o = ahn_out_of(a, s, t, h);
            for (int j = 0; j < d; j++) o[j] = scale * dot(M + (size_t) j * d, qn, d);
        }
    }
}
