/*
 * ahn_memory_selftest.c - every compiled-in kernel against the scalar kernel, in plain C.
 *
 * For machines where Python is not at hand: a cross-compiled build under qemu (how the
 * NEON kernel is tested on x86, tests/test_native_neon.py), or a new CPU. Build it with
 * the kernel sources, e.g.
 *   cc -O2 -std=c11 ahn_memory_selftest.c ahn_memory.c ahn_memory_scalar.c \
 *      ahn_memory_avx2.c ahn_memory_avx512.c ahn_memory_neon.c -lm     (+ per-file flags)
 * Prints one line per kernel and case; exit status 0 when all agree to 1e-5 (relative
 * to the largest scalar value), 1 otherwise.
 */
#include "ahn_memory.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t next_u32(void) {  /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t) ((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float) (next_u32() >> 8) / 16777216.0f; }
static float normalish(void) { return uniform(-1.0f, 1.0f) + uniform(-1.0f, 1.0f) + uniform(-1.0f, 1.0f); }

/* a random half in about +-[0.06, 4): sign, exponent 11..16, random mantissa */
static uint16_t random_half(void) {
    const uint32_t r = next_u32();
    return (uint16_t) (((r & 1u) << 15) | ((11u + (r >> 1) % 6u) << 10) | ((r >> 8) & 0x3ffu));
}

static float max_abs(const float * x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}
static float max_diff(const float * x, const float * y, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i] - y[i]));
    return m;
}

static int run_case(int variant, int d, int kv_type, int v_transposed) {
    const int H_kv = 2, n_rep = 2, H = H_kv * n_rep, S = 2, T = 37, n_stream = 2;
    const int64_t kv = 48;
    const size_t el = kv_type == AHN_DTYPE_F16 ? 2 : 4;
    const size_t n_kv = (size_t) n_stream * kv * H_kv * d;
    const int G = variant == AHN_VARIANT_DN ? H : 2 * H;

    char * k = malloc(n_kv * el), * v = malloc(n_kv * el);
    float * gates = malloc((size_t) n_stream * kv * G * sizeof(float));
    int32_t * idx = malloc((size_t) S * T * sizeof(int32_t));
    float * q = malloc((size_t) S * T * H * d * sizeof(float));
    const size_t n_state = (size_t) S * H * d * d, n_out = (size_t) S * T * H * d;
    float * state0 = malloc(n_state * sizeof(float)), * state_ref = malloc(n_state * sizeof(float));
    float * state = malloc(n_state * sizeof(float));
    float * out_ref = malloc(n_out * sizeof(float)), * out = malloc(n_out * sizeof(float));

    for (size_t i = 0; i < n_kv; i++) {
        if (kv_type == AHN_DTYPE_F16) {
            ((uint16_t *) k)[i] = random_half(); ((uint16_t *) v)[i] = random_half();
        } else {
            ((float *) k)[i] = normalish(); ((float *) v)[i] = normalish();
        }
    }
    for (int64_t r = 0; r < n_stream * kv; r++) {
        for (int h = 0; h < H; h++) {
            float * row = gates + r * G;
            if (variant == AHN_VARIANT_DN) {
                row[h] = uniform(0.05f, 0.95f);
            } else {
                const float b = variant == AHN_VARIANT_MAMBA2 ? uniform(0.01f, 2.0f) : uniform(0.05f, 0.95f);
                row[h] = variant == AHN_VARIANT_MAMBA2 ? -b * uniform(0.1f, 1.5f) : -uniform(0.01f, 2.0f);
                row[H + h] = b;
            }
        }
    }
    for (int i = 0; i < S * T; i++) idx[i] = next_u32() % 4 == 0 ? -1 : (int32_t) (next_u32() % (n_stream * kv));
    for (size_t i = 0; i < (size_t) S * T * H * d; i++) q[i] = normalish();
    for (size_t i = 0; i < n_state; i++) state0[i] = 0.3f * normalish();

    struct ahn_memory_args a;
    memset(&a, 0, sizeof a);
    a.variant = variant; a.d = d; a.n_head = H; a.n_head_kv = H_kv; a.n_tokens = T; a.n_seqs = S; a.kv_size = kv;
    /* K: [stream][cell][head][dim]; V likewise, or transposed [stream][head][dim][cell] */
    a.k = k; a.k_type = kv_type;
    a.k_nb[0] = el; a.k_nb[1] = el * d; a.k_nb[2] = el * d * H_kv; a.k_nb[3] = el * d * H_kv * kv;
    a.v = v; a.v_type = kv_type;
    if (v_transposed) {
        a.v_nb[0] = el * kv; a.v_nb[1] = el * kv * d; a.v_nb[2] = el; a.v_nb[3] = el * kv * d * H_kv;
    } else {
        memcpy(a.v_nb, a.k_nb, sizeof a.v_nb);
    }
    a.gates = gates; a.gates_type = AHN_DTYPE_F32; a.gates_nb[0] = 4; a.gates_nb[1] = 4 * (size_t) G; a.gates_nb[2] = 4 * (size_t) G * kv;
    a.idx = idx;
    a.q = q; a.q_nb[0] = 4; a.q_nb[1] = 4 * (size_t) d; a.q_nb[2] = 4 * (size_t) d * H; a.q_nb[3] = 4 * (size_t) d * H * T;

    memcpy(state_ref, state0, n_state * sizeof(float));
    a.state = state_ref; a.out = out_ref;
    const char * msg = ahn_memory_check_args(&a);
    if (msg) { printf("check_args: %s\n", msg); return 1; }
    ahn_memory_step_scalar(&a, 0, 1);

    static const char * names[] = { "avx512", "avx2", "neon" };
    int fails = 0;
    for (int n = 0; n < 3; n++) {
        memcpy(state, state0, n_state * sizeof(float));
        a.state = state; a.out = out;
        const int rc = ahn_memory_step_named(names[n], &a, 0, 1);
        if (rc == -1) continue;  /* not compiled in / not this CPU */
        const float e_out = max_diff(out, out_ref, n_out) / max_abs(out_ref, n_out);
        const float e_state = max_diff(state, state_ref, n_state) / max_abs(state_ref, n_state);
        const int ok = rc == 0 && e_out < 1e-5f && e_state < 1e-5f;
        printf("%-6s variant=%d d=%3d kv=%s v_transposed=%d  out %.1e  state %.1e  %s\n", names[n], variant, d,
               kv_type == AHN_DTYPE_F16 ? "f16" : "f32", v_transposed, (double) e_out, (double) e_state, ok ? "ok" : "FAIL");
        fails += !ok;
    }
    free(k); free(v); free(gates); free(idx); free(q); free(state0); free(state_ref); free(state); free(out_ref); free(out);
    return fails;
}

int main(void) {
    int fails = 0;
    printf("best kernel: %s\n", ahn_memory_kernel_name());
    for (int variant = 0; variant < 3; variant++)
        for (int d = 64; d <= 128; d *= 2)
            for (int kv_type = 0; kv_type < 2; kv_type++)
                for (int vt = 0; vt < 2; vt++) fails += run_case(variant, d, kv_type, vt);
    printf("%s\n", fails ? "FAILED" : "all kernels agree with scalar");
    return fails ? 1 : 0;
}
