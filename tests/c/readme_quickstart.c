#include "gptq.h"
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                              \
    do {                                                                         \
        gptq_status s_ = (call);                                                 \
        if (s_ != GPTQ_STATUS_OK) {                                              \
            fprintf(stderr, "%s: %s\n", #call, gptq_last_error_message());      \
            return 1;                                                            \
        }                                                                        \
    } while (0)

int main(void) {
    enum { OUT = 256, IN = 512, TOKENS = 1024 };
    float *w = malloc(sizeof(float) * OUT * IN);     /* nn.Linear weight [out, in] */
    float *x = malloc(sizeof(float) * TOKENS * IN);  /* calibration activations [tokens, in] */
    for (int i = 0; i < OUT * IN; i++) w[i] = (float)((i * 7919LL) % 2001 - 1000) / 50000.0f;
    for (int i = 0; i < TOKENS * IN; i++) x[i] = (float)((i * 104729LL) % 2001 - 1000) / 1000.0f;

    /* 1. Accumulate the Hessian of the layer's inputs (batch by batch in real use). */
    gptq_hessian *h = NULL;
    CHECK(gptq_hessian_new(IN, GPTQ_COUNT_ROWS, &h));
    CHECK(gptq_hessian_add_batch(h, x, GPTQ_DTYPE_F32, TOKENS, IN, IN));

    /* 2. Quantize: 4 bit, group 128, act-order. */
    gptq_quant_config cfg;
    CHECK(gptq_quant_config_init(&cfg, sizeof cfg));
    cfg.desc_act = 1;
    gptq_quant_report report = {.struct_size = sizeof report};
    gptq_layer *layer = NULL;
    CHECK(gptq_quantize(h, w, GPTQ_DTYPE_F32, OUT, IN, IN, &cfg, &layer, &report));
    printf("GPTQ loss %.4g vs RTN %.4g (damping %.3g)\n", report.loss_gptq, report.loss_rtn,
           (double)report.damp_percent_used);

    /* 3. Run it: y[1, OUT] = x[0, :] · dequant(W)ᵀ on the CPU. */
    float y[OUT];
    CHECK(gptq_gemm(layer, x, GPTQ_DTYPE_F32, 1, IN, y, GPTQ_DTYPE_F32, OUT));
    printf("y[0] = %g\n", (double)y[0]);

    gptq_layer_free(layer);
    gptq_hessian_free(h);
    free(w);
    free(x);
    return 0;
}
