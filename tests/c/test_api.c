/* End-to-end test of the C API as a C11 program: quantize, export, import, dequantize, GEMM, errors.
 * Built by tests/c_programs.rs with -std=c11 -Wall -Wextra -Wpedantic -Werror, plain and with
 * -fsanitize=address,undefined. Exits non-zero on the first failed check. */
#include "gptq.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, "\n");                                    \
            failures++;                                               \
        }                                                             \
    } while (0)
#define OK(call)                                                                     \
    do {                                                                             \
        gptq_status s_ = (call);                                                     \
        if (s_ != GPTQ_STATUS_OK) {                                                  \
            fprintf(stderr, "%s:%d: %s -> %d (%s): %s\n", __FILE__, __LINE__, #call, \
                    (int)s_, gptq_status_string(s_), gptq_last_error_message());     \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static uint64_t rng_state = 0x1234567u;
static double uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float gaussian(void) {
    double u1 = uniform() + 1e-12, u2 = uniform();
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

enum { N = 96, K = 256, ROWS = 512, M = 5, LDC = N + 3 };

int main(void) {
    CHECK(gptq_version_number() == GPTQ_VERSION_NUMBER, "library %u vs header %u", gptq_version_number(),
          (unsigned)GPTQ_VERSION_NUMBER);
    CHECK(strcmp(gptq_version_string(), GPTQ_VERSION_STRING) == 0, "version string %s", gptq_version_string());

    /* Weights and correlated activations with one outlier channel. */
    float *w = malloc(sizeof(float) * N * K);
    float *x = malloc(sizeof(float) * ROWS * K);
    for (int i = 0; i < N * K; i++) w[i] = 0.02f * gaussian();
    for (int r = 0; r < ROWS; r++) {
        float z = gaussian();
        for (int c = 0; c < K; c++) x[r * K + c] = z * (float)(c % 7) * 0.3f + gaussian() * (c == 17 ? 20.0f : 1.0f);
    }

    gptq_hessian *h = NULL;
    OK(gptq_hessian_new(K, GPTQ_COUNT_ROWS, &h));
    OK(gptq_hessian_add_batch(h, x, GPTQ_DTYPE_F32, ROWS / 2, K, K));
    OK(gptq_hessian_add_batch(h, x + (ROWS / 2) * K, GPTQ_DTYPE_F32, ROWS / 2, K, K));
    size_t in_features = 0;
    uint64_t n_samples = 0;
    OK(gptq_hessian_info(h, &in_features, &n_samples));
    CHECK(in_features == K && n_samples == ROWS, "info %zu %llu", in_features, (unsigned long long)n_samples);

    gptq_quant_config cfg;
    OK(gptq_quant_config_init(&cfg, sizeof cfg));
    CHECK(cfg.bits == 4 && cfg.group_size == 128 && cfg.sym == 1, "defaults %u %d %d", cfg.bits, cfg.group_size, cfg.sym);
    cfg.desc_act = 1;

    gptq_layer *layer = NULL;
    gptq_quant_report report;
    memset(&report, 0, sizeof report);
    report.struct_size = sizeof report;
    OK(gptq_quantize(h, w, GPTQ_DTYPE_F32, N, K, K, &cfg, &layer, &report));
    CHECK(report.loss_gptq > 0 && report.loss_gptq < report.loss_rtn, "gptq %g rtn %g", report.loss_gptq, report.loss_rtn);
    CHECK(fabsf(report.damp_percent_used - 0.01f) < 1e-6f, "damp %g", (double)report.damp_percent_used);

    gptq_layer_properties info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(gptq_layer_info(layer, &info));
    CHECK(info.in_features == K && info.out_features == N && info.num_groups == 2 && info.act_order == 1,
          "info %zu %zu %zu %d", info.in_features, info.out_features, info.num_groups, info.act_order);

    /* Export v1, import it back: the dequantized weights agree exactly. */
    size_t nqw = info.qweight_rows * N, nqz = info.num_groups * info.qzeros_cols, ns = info.num_groups * N;
    int32_t *qweight = malloc(sizeof(int32_t) * nqw), *qzeros = malloc(sizeof(int32_t) * nqz);
    uint16_t *scales = malloc(sizeof(uint16_t) * ns);
    int32_t *g_idx = malloc(sizeof(int32_t) * K);
    OK(gptq_layer_export(layer, GPTQ_FORMAT_V1, qweight, nqw, qzeros, nqz, scales, ns, g_idx, K, NULL, 0));
    CHECK((uint32_t)qzeros[0] == 0x77777777u, "symmetric 4-bit v1 qzeros word %08x", (unsigned)qzeros[0]);

    gptq_layer_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.struct_size = sizeof desc;
    desc.bits = 4;
    desc.group_size = 128;
    desc.in_features = K;
    desc.out_features = N;
    desc.sym = 1;
    desc.format = GPTQ_FORMAT_V1;
    gptq_layer *imported = NULL;
    OK(gptq_layer_import(&desc, qweight, nqw, qzeros, nqz, scales, ns, g_idx, K, NULL, 0, &imported));

    float *deq = malloc(sizeof(float) * N * K), *deq2 = malloc(sizeof(float) * N * K);
    OK(gptq_layer_dequantize(layer, GPTQ_DTYPE_F32, deq, (size_t)N * K));
    OK(gptq_layer_dequantize(imported, GPTQ_DTYPE_F32, deq2, (size_t)N * K));
    CHECK(memcmp(deq, deq2, sizeof(float) * N * K) == 0, "import(export(layer)) dequantizes differently");

    /* GEMM against a double-precision reference; C is poisoned first, its padding must survive. */
    float a[M * K];
    for (int i = 0; i < M * K; i++) a[i] = gaussian();
    float c[M * LDC];
    for (int i = 0; i < M * LDC; i++) c[i] = NAN;
    OK(gptq_gemm(imported, a, GPTQ_DTYPE_F32, M, K, c, GPTQ_DTYPE_F32, LDC));
    double num = 0, den = 0;
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double ref = 0;
            for (int k = 0; k < K; k++) ref += (double)a[m * K + k] * deq[n * K + k];
            double got = c[m * LDC + n];
            CHECK(!isnan(got), "C[%d,%d] not written", m, n);
            num += (got - ref) * (got - ref);
            den += ref * ref;
        }
        for (int n = N; n < LDC; n++) CHECK(isnan(c[m * LDC + n]), "padding C[%d,%d] overwritten", m, n);
    }
    CHECK(sqrt(num / den) < 1e-5, "relative error %g", sqrt(num / den));

    /* Errors: a status, a message naming the problem, outputs untouched. */
    float before = c[0];
    gptq_status s = gptq_gemm(NULL, a, GPTQ_DTYPE_F32, M, K, c, GPTQ_DTYPE_F32, LDC);
    CHECK(s == GPTQ_STATUS_NULL_POINTER, "status %d", s);
    CHECK(strstr(gptq_last_error_message(), "layer") != NULL, "message '%s'", gptq_last_error_message());
    s = gptq_gemm(layer, a, 42, M, K, c, GPTQ_DTYPE_F32, LDC);
    CHECK(s == GPTQ_STATUS_INVALID_ENUM, "status %d", s);
    CHECK(memcmp(&before, &c[0], sizeof before) == 0, "C changed by a failed call");
    gptq_layer *untouched = (gptq_layer *)&before;
    desc.bits = 5;
    s = gptq_layer_import(&desc, qweight, nqw, qzeros, nqz, scales, ns, g_idx, K, NULL, 0, &untouched);
    CHECK(s == GPTQ_STATUS_UNSUPPORTED && untouched == (gptq_layer *)&before, "status %d", s);
    CHECK(strstr(gptq_last_error_message(), "bits 5") != NULL, "message '%s'", gptq_last_error_message());
    CHECK(strcmp(gptq_status_string(GPTQ_STATUS_OK), "ok") == 0, "status string");

    gptq_layer_free(imported);
    gptq_layer_free(layer);
    gptq_hessian_free(h);
    gptq_layer_free(NULL);
    gptq_hessian_free(NULL);
    free(w); free(x); free(qweight); free(qzeros); free(scales); free(g_idx); free(deq); free(deq2);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_api: all checks passed\n");
    return 0;
}
