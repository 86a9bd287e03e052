// Tests of the C++ binding (bindings/cpp/gptq.hpp) against libgptq: run by tests/c_programs.rs,
// plainly and under AddressSanitizer + UBSan. Exits non-zero on the first failed check.
#include "gptq.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#define EXPECT(cond)                                                                     \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            std::exit(1);                                                                \
        }                                                                                \
    } while (0)

// The status a call throws with, or GPTQ_STATUS_OK when it does not throw.
template <class F> static gptq_status status_of(F&& f, std::string* message = nullptr) {
    try {
        f();
    } catch (const gptq::Error& e) {
        if (message) *message = e.what();
        return e.status();
    }
    return GPTQ_STATUS_OK;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float uniform() {  // in [-1, 1)
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

int main() {
    enum { OUT = 96, IN = 256, TOKENS = 512, M = 3 };
    EXPECT(gptq::version_number() == GPTQ_VERSION_NUMBER);
    EXPECT(std::strcmp(gptq::version_string(), GPTQ_VERSION_STRING) == 0);
    gptq::set_num_threads(2);
    EXPECT(gptq::num_threads() == 2);
    EXPECT(std::strlen(gptq::status_string(GPTQ_STATUS_SHAPE_MISMATCH)) > 0);

    std::vector<float> w(OUT * IN), x(TOKENS * IN);
    for (auto& v : w) v = 0.05f * uniform();
    for (auto& v : x) v = uniform();

    // Hessian: two halves merged equal one pass over all rows.
    gptq::Hessian h(IN);
    h.add_batch(x.data(), gptq::DType::F32, TOKENS, IN, IN);
    EXPECT(h.in_features() == IN && h.n_samples() == TOKENS);
    gptq::Hessian h1(IN), h2(IN);
    h1.add_batch(x.data(), gptq::DType::F32, TOKENS / 2, IN, IN);
    h2.add_batch(x.data() + TOKENS / 2 * IN, gptq::DType::F32, TOKENS / 2, IN, IN);
    h1.merge(h2);
    std::vector<float> ha(IN * IN), hb(IN * IN);
    h.read(ha.data(), ha.size());
    h1.read(hb.data(), hb.size());
    for (std::size_t i = 0; i < ha.size(); i++) EXPECT(std::fabs(ha[i] - hb[i]) <= 1e-4f * (1.0f + std::fabs(ha[i])));
    gptq::Hessian hd = gptq::Hessian::from_dense(ha.data(), gptq::DType::F32, IN, TOKENS);
    EXPECT(hd.n_samples() == TOKENS);
    // A wrong width is the library's error, thrown with its status and message.
    std::string msg;
    EXPECT(status_of([&] { h.add_batch(x.data(), gptq::DType::F32, 4, IN + 1, IN + 1); }, &msg) ==
           GPTQ_STATUS_SHAPE_MISMATCH);
    EXPECT(!msg.empty());
    EXPECT(h.n_samples() == TOKENS);  // the failed call left the Hessian as it was

    // Quantize: GPTQ beats round-to-nearest on the Hessian's own loss.
    gptq_quant_config cfg = gptq::default_quant_config();
    EXPECT(cfg.bits == 4 && cfg.group_size == 128);
    gptq_quant_report report{};
    report.struct_size = sizeof report;
    gptq::Layer q = gptq::Layer::quantize(h, w.data(), gptq::DType::F32, OUT, IN, IN, cfg, &report);
    EXPECT(report.loss_gptq > 0 && report.loss_gptq < report.loss_rtn);
    gptq::Layer rtn = gptq::Layer::quantize_rtn(w.data(), gptq::DType::F32, OUT, IN, IN, cfg);
    cfg.bits = 5;
    std::string bits_msg;
    const gptq_status bad_bits =
        status_of([&] { gptq::Layer::quantize_rtn(w.data(), gptq::DType::F32, OUT, IN, IN, cfg); }, &bits_msg);
    EXPECT(bad_bits != GPTQ_STATUS_OK && bits_msg.find("bits") != std::string::npos);
    cfg.bits = 4;

    gptq_layer_properties p = q.info();
    EXPECT(p.bits == 4 && p.in_features == IN && p.out_features == OUT && p.num_groups == IN / 128);

    // Export and import give back the same layer: same dequantized weight.
    std::vector<int32_t> qweight(p.qweight_rows * OUT), qzeros(p.num_groups * p.qzeros_cols), g_idx(IN);
    std::vector<uint16_t> scales(p.num_groups * OUT);
    q.export_tensors(gptq::Format::V1, qweight.data(), qweight.size(), qzeros.data(), qzeros.size(), scales.data(),
                     scales.size(), g_idx.data(), g_idx.size(), nullptr, 0);
    gptq::Layer back = gptq::Layer::import(gptq::layer_desc(4, 128, IN, OUT, true, gptq::Format::V1), qweight.data(),
                                           qweight.size(), qzeros.data(), qzeros.size(), scales.data(), scales.size(),
                                           g_idx.data(), g_idx.size(), nullptr, 0);
    std::vector<float> dq(OUT * IN), dq_back(OUT * IN);
    q.dequantize(gptq::DType::F32, dq.data(), dq.size());
    back.dequantize(gptq::DType::F32, dq_back.data(), dq_back.size());
    EXPECT(dq == dq_back);
    EXPECT(status_of([&] { q.dequantize(gptq::DType::F32, dq.data(), dq.size() - 1); }) ==
           GPTQ_STATUS_BUFFER_TOO_SMALL);

    // CPU GEMM against the dequantized weight (f64 sums).
    std::vector<float> c(M * OUT, NAN);
    q.gemm(x.data(), gptq::DType::F32, M, IN, c.data(), gptq::DType::F32, OUT);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < OUT; n++) {
            double ref = 0;
            for (int k = 0; k < IN; k++) ref += (double)x[m * IN + k] * dq[n * IN + k];
            EXPECT(std::fabs(c[m * OUT + n] - ref) <= 1e-4 * (1.0 + std::fabs(ref)));
        }

    // Handles move; the moved-from object owns nothing.
    gptq::Layer moved = std::move(rtn);
    EXPECT(moved.get() != nullptr && rtn.get() == nullptr);

    // Checkpoint round trip; a writer dropped without finish leaves nothing behind.
    char dir[] = "/tmp/gptq-cpp-XXXXXX";
    EXPECT(mkdtemp(dir) != nullptr);
    const std::string ckpt = std::string(dir) + "/model";
    const char* qcfg = "{\"bits\":4,\"group_size\":128,\"desc_act\":false,\"sym\":true}";
    {
        gptq::CheckpointWriter abandoned(ckpt.c_str(), qcfg);
        abandoned.add_layer("model.layers.0.mlp.up_proj", q);
    }
    struct stat st;
    EXPECT(stat(ckpt.c_str(), &st) != 0);  // the aborted writer removed the directory it made
    {
        gptq::CheckpointWriter writer(ckpt.c_str(), qcfg);
        writer.add_layer("model.layers.0.mlp.up_proj", q);
        const std::size_t shape[1] = {4};
        const float norm[4] = {1, 2, 3, 4};
        writer.add_tensor("model.norm.weight", "F32", shape, 1, norm, sizeof norm);
        writer.finish();
        EXPECT(status_of([&] { writer.finish(); }) == GPTQ_STATUS_NULL_POINTER);  // spent
    }
    {
        gptq::Checkpoint cp(ckpt);
        EXPECT(cp.num_layers() == 1 && std::strcmp(cp.layer_name(0), "model.layers.0.mlp.up_proj") == 0);
        EXPECT(cp.layer_info(cp.layer_name(0)).out_features == OUT);
        EXPECT(std::string(cp.config()).find("\"bits\":4") != std::string::npos);
        EXPECT(cp.num_tensors() == 1);
        gptq_tensor_view v = cp.find_tensor("model.norm.weight");
        EXPECT(v.nbytes == 16 && std::strcmp(v.dtype, "F32") == 0 && v.ndim == 1 && v.shape[0] == 4);
        float norm_back[4];
        std::memcpy(norm_back, v.data, sizeof norm_back);
        EXPECT(norm_back[0] == 1 && norm_back[1] == 2 && norm_back[2] == 3 && norm_back[3] == 4);
        EXPECT(std::strcmp(cp.tensor(0).name, "model.norm.weight") == 0);
        EXPECT(status_of([&] { cp.find_tensor("no.such.tensor"); }) == GPTQ_STATUS_INVALID_ARGUMENT);
        gptq::Layer loaded = cp.get_layer("model.layers.0.mlp.up_proj");
        std::vector<float> dq_loaded(OUT * IN);
        loaded.dequantize(gptq::DType::F32, dq_loaded.data(), dq_loaded.size());
        EXPECT(dq_loaded == dq);
    }
    EXPECT(status_of([&] { gptq::Checkpoint("/nonexistent/gptq-checkpoint"); }) == GPTQ_STATUS_IO);
    std::string rm = std::string("rm -rf ") + dir;
    EXPECT(std::system(rm.c_str()) == 0);

    // CUDA: a count where a driver is present, else the library's NO_DEVICE error.
    int devices = -1;
    const gptq_status s = status_of([&] { devices = gptq::cuda::device_count(); });
    EXPECT(s == GPTQ_STATUS_OK || s == GPTQ_STATUS_NO_DEVICE);
    if (s == GPTQ_STATUS_NO_DEVICE) {
        EXPECT(status_of([&] { gptq::cuda::Layer(q, 0); }) == GPTQ_STATUS_NO_DEVICE);
    } else if (devices > 0) {
        gptq::cuda::Layer cl(q, 0);
        (void)cl.workspace_size(16);
    }
    std::printf("C++ binding: all checks passed (CUDA devices: %d)\n", devices);
    return 0;
}
