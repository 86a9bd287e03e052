// libgptq C++ binding: the C API of include/gptq.h in C++ idiom, header-only (C++17).
//
// Every handle is a move-only RAII object whose destructor calls the matching free; every failing
// call throws gptq::Error carrying the status code and the library's message (read in the same
// thread, right after the call). Nothing else is added: sizes, shapes and pointers are checked by
// the library, and the rules on ownership, NULL and thread safety are the C header's, function by
// function. Link with -lgptq and put include/ on the include path.
#ifndef GPTQ_HPP
#define GPTQ_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "gptq.h"

namespace gptq {

/// A failed call: `status()` is the C status code, `what()` the library's message.
class Error : public std::runtime_error {
  public:
    Error(gptq_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    gptq_status status() const noexcept { return status_; }

  private:
    gptq_status status_;
};

namespace detail {
// Throws on a failed status, with the thread-local message of the call that just returned.
inline void check(gptq_status status) {
    if (status != GPTQ_STATUS_OK) {
        // Copied before any other libgptq call: the message lives until the thread's next call.
        const char* msg = gptq_last_error_message();
        std::string message(msg ? msg : "");
        throw Error(status, std::string(gptq_status_string(status)) + ": " + message);
    }
}
template <class T, void (*Free)(T*)> struct Deleter {
    void operator()(T* p) const noexcept { Free(p); }
};
template <class T, void (*Free)(T*)> using Owned = std::unique_ptr<T, Deleter<T, Free>>;
}  // namespace detail

enum class DType : gptq_dtype {
    F32 = GPTQ_DTYPE_F32,
    F16 = GPTQ_DTYPE_F16,
    BF16 = GPTQ_DTYPE_BF16,
    F64 = GPTQ_DTYPE_F64,
};
enum class Format : gptq_format { V1 = GPTQ_FORMAT_V1, V2 = GPTQ_FORMAT_V2 };
enum class SampleCount : gptq_sample_count { Rows = GPTQ_COUNT_ROWS, Batches = GPTQ_COUNT_BATCHES };

inline uint32_t version_number() noexcept { return gptq_version_number(); }
inline const char* version_string() noexcept { return gptq_version_string(); }
inline void set_num_threads(std::size_t n) { detail::check(gptq_set_num_threads(n)); }
inline std::size_t num_threads() noexcept { return gptq_get_num_threads(); }
inline const char* status_string(gptq_status status) noexcept { return gptq_status_string(status); }

/// gptq_quant_config with the library's defaults (gptq_quant_config_init).
inline gptq_quant_config default_quant_config() {
    gptq_quant_config c;
    detail::check(gptq_quant_config_init(&c, sizeof c));
    return c;
}

/// A layer description for Layer::import with struct_size set.
inline gptq_layer_desc layer_desc(uint32_t bits, int32_t group_size, std::size_t in_features,
                                  std::size_t out_features, bool sym, Format format) {
    gptq_layer_desc d{};
    d.struct_size = sizeof d;
    d.bits = bits;
    d.group_size = group_size;
    d.in_features = in_features;
    d.out_features = out_features;
    d.sym = sym ? 1 : 0;
    d.format = static_cast<gptq_format>(format);
    return d;
}

/// The Hessian of a layer's inputs (gptq_hessian_*).
class Hessian {
  public:
    explicit Hessian(std::size_t in_features, SampleCount count = SampleCount::Rows) {
        gptq_hessian* h = nullptr;
        detail::check(gptq_hessian_new(in_features, static_cast<gptq_sample_count>(count), &h));
        h_.reset(h);
    }
    static Hessian from_dense(const void* h, DType dtype, std::size_t in_features, uint64_t n_samples,
                              SampleCount count = SampleCount::Rows) {
        gptq_hessian* out = nullptr;
        detail::check(gptq_hessian_from_dense(h, static_cast<gptq_dtype>(dtype), in_features, n_samples,
                                              static_cast<gptq_sample_count>(count), &out));
        return Hessian(out);
    }
    void add_batch(const void* x, DType dtype, std::size_t rows, std::size_t cols, std::size_t row_stride) {
        detail::check(gptq_hessian_add_batch(h_.get(), x, static_cast<gptq_dtype>(dtype), rows, cols, row_stride));
    }
    void merge(const Hessian& src) { detail::check(gptq_hessian_merge(h_.get(), src.get())); }
    std::size_t in_features() const {
        std::size_t n = 0;
        detail::check(gptq_hessian_info(h_.get(), &n, nullptr));
        return n;
    }
    uint64_t n_samples() const {
        uint64_t n = 0;
        detail::check(gptq_hessian_info(h_.get(), nullptr, &n));
        return n;
    }
    /// The normalized Hessian, in_features² floats, row-major.
    void read(float* out, std::size_t out_len) const { detail::check(gptq_hessian_read(h_.get(), out, out_len)); }
    gptq_hessian* get() const noexcept { return h_.get(); }

  private:
    explicit Hessian(gptq_hessian* h) : h_(h) {}
    detail::Owned<gptq_hessian, gptq_hessian_free> h_;
};

/// A quantized layer (gptq_layer_*, gptq_quantize*, gptq_gemm).
class Layer {
  public:
    /// GPTQ (gptq_quantize); `report` may be null.
    static Layer quantize(const Hessian& hessian, const void* weight, DType dtype, std::size_t out_features,
                          std::size_t in_features, std::size_t row_stride, const gptq_quant_config& config,
                          gptq_quant_report* report = nullptr) {
        gptq_layer* out = nullptr;
        detail::check(gptq_quantize(hessian.get(), weight, static_cast<gptq_dtype>(dtype), out_features, in_features,
                                    row_stride, &config, &out, report));
        return Layer(out);
    }
    /// Round to nearest (gptq_quantize_rtn).
    static Layer quantize_rtn(const void* weight, DType dtype, std::size_t out_features, std::size_t in_features,
                              std::size_t row_stride, const gptq_quant_config& config) {
        gptq_layer* out = nullptr;
        detail::check(gptq_quantize_rtn(weight, static_cast<gptq_dtype>(dtype), out_features, in_features, row_stride,
                                        &config, &out));
        return Layer(out);
    }
    /// From checkpoint tensors (gptq_layer_import); `g_idx` and `bias` may be null with length 0.
    static Layer import(const gptq_layer_desc& desc, const int32_t* qweight, std::size_t qweight_len,
                        const int32_t* qzeros, std::size_t qzeros_len, const uint16_t* scales, std::size_t scales_len,
                        const int32_t* g_idx, std::size_t g_idx_len, const uint16_t* bias, std::size_t bias_len) {
        gptq_layer* out = nullptr;
        detail::check(gptq_layer_import(&desc, qweight, qweight_len, qzeros, qzeros_len, scales, scales_len, g_idx,
                                        g_idx_len, bias, bias_len, &out));
        return Layer(out);
    }
    gptq_layer_properties info() const {
        gptq_layer_properties p{};
        p.struct_size = sizeof p;
        detail::check(gptq_layer_info(l_.get(), &p));
        return p;
    }
    /// The checkpoint tensors (gptq_layer_export), each buffer sized per info(); `bias` may be null
    /// with length 0 (not written).
    void export_tensors(Format format, int32_t* qweight, std::size_t qweight_len, int32_t* qzeros,
                        std::size_t qzeros_len, uint16_t* scales, std::size_t scales_len, int32_t* g_idx,
                        std::size_t g_idx_len, uint16_t* bias, std::size_t bias_len) const {
        detail::check(gptq_layer_export(l_.get(), static_cast<gptq_format>(format), qweight, qweight_len, qzeros,
                                        qzeros_len, scales, scales_len, g_idx, g_idx_len, bias, bias_len));
    }
    /// The dequantized weight [out_features, in_features] (gptq_layer_dequantize).
    void dequantize(DType out_dtype, void* out, std::size_t out_len) const {
        detail::check(gptq_layer_dequantize(l_.get(), static_cast<gptq_dtype>(out_dtype), out, out_len));
    }
    /// C[m, out_features] = A[m, in_features] · Wᵀ (+ bias) on the CPU (gptq_gemm).
    void gemm(const void* a, DType a_dtype, std::size_t m, std::size_t lda, void* c, DType c_dtype,
              std::size_t ldc) const {
        detail::check(gptq_gemm(l_.get(), a, static_cast<gptq_dtype>(a_dtype), m, lda, c,
                                static_cast<gptq_dtype>(c_dtype), ldc));
    }
    gptq_layer* get() const noexcept { return l_.get(); }

  private:
    friend class Checkpoint;
    explicit Layer(gptq_layer* l) : l_(l) {}
    detail::Owned<gptq_layer, gptq_layer_free> l_;
};

/// A GPTQ checkpoint opened for reading (gptq_checkpoint_*). Strings and tensor views it returns
/// point into it and stay valid until it is destroyed.
class Checkpoint {
  public:
    explicit Checkpoint(const char* path) {
        gptq_checkpoint* c = nullptr;
        detail::check(gptq_checkpoint_open(path, &c));
        c_.reset(c);
    }
    explicit Checkpoint(const std::string& path) : Checkpoint(path.c_str()) {}
    std::size_t num_layers() const {
        std::size_t n = 0;
        detail::check(gptq_checkpoint_num_layers(c_.get(), &n));
        return n;
    }
    const char* layer_name(std::size_t index) const {
        const char* name = nullptr;
        detail::check(gptq_checkpoint_layer_name(c_.get(), index, &name));
        return name;
    }
    gptq_layer_properties layer_info(const char* name) const {
        gptq_layer_properties p{};
        p.struct_size = sizeof p;
        detail::check(gptq_checkpoint_layer_info(c_.get(), name, &p));
        return p;
    }
    Layer get_layer(const char* name) const {
        gptq_layer* out = nullptr;
        detail::check(gptq_checkpoint_get_layer(c_.get(), name, &out));
        return Layer(out);
    }
    std::size_t num_tensors() const {
        std::size_t n = 0;
        detail::check(gptq_checkpoint_num_tensors(c_.get(), &n));
        return n;
    }
    gptq_tensor_view tensor(std::size_t index) const {
        gptq_tensor_view v{};
        v.struct_size = sizeof v;
        detail::check(gptq_checkpoint_tensor(c_.get(), index, &v));
        return v;
    }
    gptq_tensor_view find_tensor(const char* name) const {
        gptq_tensor_view v{};
        v.struct_size = sizeof v;
        detail::check(gptq_checkpoint_find_tensor(c_.get(), name, &v));
        return v;
    }
    /// The quantization config as compact JSON.
    const char* config() const {
        const char* json = nullptr;
        detail::check(gptq_checkpoint_config(c_.get(), &json));
        return json;
    }
    gptq_checkpoint* get() const noexcept { return c_.get(); }

  private:
    detail::Owned<gptq_checkpoint, gptq_checkpoint_close> c_;
};

/// Writes a checkpoint (gptq_checkpoint_writer_*). finish() commits it; a writer destroyed
/// without finishing aborts, leaving the directory as it was.
class CheckpointWriter {
  public:
    /// `options` may be null (defaults).
    CheckpointWriter(const char* dir, const char* quant_config_json,
                     const gptq_checkpoint_write_options* options = nullptr) {
        gptq_checkpoint_writer* w = nullptr;
        detail::check(gptq_checkpoint_writer_new(dir, quant_config_json, options, &w));
        w_.reset(w);
    }
    void add_layer(const char* name, const Layer& layer) {
        detail::check(gptq_checkpoint_writer_add_layer(w_.get(), name, layer.get()));
    }
    void add_tensor(const char* name, const char* dtype, const std::size_t* shape, std::size_t ndim, const void* data,
                    std::size_t nbytes) {
        detail::check(gptq_checkpoint_writer_add_tensor(w_.get(), name, dtype, shape, ndim, data, nbytes));
    }
    /// Commits the files; the writer is spent whether or not this throws.
    void finish() { detail::check(gptq_checkpoint_writer_finish(w_.release())); }
    gptq_checkpoint_writer* get() const noexcept { return w_.get(); }

  private:
    detail::Owned<gptq_checkpoint_writer, gptq_checkpoint_writer_abort> w_;
};

/// The CUDA backend (gptq_cuda_*): device pointers and the caller's stream, as in the C API.
namespace cuda {
inline int device_count() {
    int32_t n = 0;
    detail::check(gptq_cuda_device_count(&n));
    return n;
}
inline void init(int device) { detail::check(gptq_cuda_init(device)); }

/// A layer prepared on one device (gptq_cuda_layer_*).
class Layer {
  public:
    Layer(const gptq::Layer& layer, int device) {
        gptq_cuda_layer* l = nullptr;
        detail::check(gptq_cuda_layer_new(layer.get(), device, &l));
        l_.reset(l);
    }
    std::size_t workspace_size(std::size_t m) const {
        std::size_t bytes = 0;
        detail::check(gptq_cuda_workspace_size(l_.get(), m, &bytes));
        return bytes;
    }
    /// Enqueues C = A · Wᵀ (+ bias) on `stream`; `a`, `c`, `workspace` are device pointers.
    void gemm(const void* a, DType dtype, std::size_t m, std::size_t lda, void* c, std::size_t ldc, void* workspace,
              std::size_t workspace_bytes, CUstream_st* stream) const {
        detail::check(gptq_cuda_gemm(l_.get(), a, static_cast<gptq_dtype>(dtype), m, lda, c, ldc, workspace,
                                     workspace_bytes, stream));
    }
    /// Enqueues the dequantized weight, fp16 [out_features, in_features], into device memory `out`.
    void dequantize(void* out, CUstream_st* stream) const {
        detail::check(gptq_cuda_dequantize(l_.get(), out, stream));
    }
    gptq_cuda_layer* get() const noexcept { return l_.get(); }

  private:
    detail::Owned<gptq_cuda_layer, gptq_cuda_layer_free> l_;
};
}  // namespace cuda

}  // namespace gptq

#endif  // GPTQ_HPP
