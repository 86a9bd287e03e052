// libgptq Node binding, native part (N-API, C): converts JavaScript values to the C API's arguments
// and back, and nothing else. Handles are external values holding a box the JavaScript classes in
// index.js own (close() frees; the garbage collector frees what was not closed). A failing call
// throws an Error whose `status` is the C status code, `code` its name and `message` the library's
// message (read right after the call, on the same thread). Typed arrays carry their lengths, so the
// element counts a C call will read or write are checked here first: the C API cannot see them.
#define NAPI_VERSION 8
#include <node_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gptq.h"

// ---- errors ----

static void throw_status(napi_env env, gptq_status s, const char* message) {
    napi_value msg, err, status, code;
    napi_create_string_utf8(env, message ? message : "", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_create_int32(env, s, &status);
    napi_set_named_property(env, err, "status", status);
    napi_create_string_utf8(env, gptq_status_string(s), NAPI_AUTO_LENGTH, &code);
    napi_set_named_property(env, err, "code", code);
    napi_throw(env, err);
}
// Throws the library's error for a failed status; returns whether the call succeeded.
static int ok(napi_env env, gptq_status s) {
    if (s == GPTQ_STATUS_OK) return 1;
    throw_status(env, s, gptq_last_error_message());
    return 0;
}
// A binding-side argument error (wrong JavaScript type, too short an array).
static napi_value fail(napi_env env, gptq_status s, const char* message) {
    throw_status(env, s, message);
    return NULL;
}

// ---- arguments ----

#define ARGS(N)                                                               \
    size_t argc = N;                                                          \
    napi_value argv[N];                                                       \
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL; \
    if (argc < N) return fail(env, GPTQ_STATUS_INVALID_ARGUMENT, "too few arguments")

static int get_size(napi_env env, napi_value v, size_t* out) {
    double d;
    if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d > 9007199254740991.0 || d != (double)(uint64_t)d) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a non-negative integer");
        return 0;
    }
    *out = (size_t)d;
    return 1;
}
static int get_i32(napi_env env, napi_value v, int32_t* out) {
    if (napi_get_value_int32(env, v, out) != napi_ok) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected an integer");
        return 0;
    }
    return 1;
}
static int is_nullish(napi_env env, napi_value v) {
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok) return 0;
    return t == napi_null || t == napi_undefined;
}
// A typed array: data, element count, and its N-API type.
typedef struct {
    void* data;
    size_t len;
    napi_typedarray_type type;
} Array;
static int get_array(napi_env env, napi_value v, Array* a) {
    bool is;
    napi_value buf;
    size_t off;
    if (napi_is_typedarray(env, v, &is) != napi_ok || !is ||
        napi_get_typedarray_info(env, v, &a->type, &a->len, &a->data, &buf, &off) != napi_ok) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a typed array");
        return 0;
    }
    return 1;
}
// A typed array of one element type, or null/undefined (data NULL, length 0) when `optional`.
static int get_typed(napi_env env, napi_value v, napi_typedarray_type want, int optional, Array* a) {
    if (optional && is_nullish(env, v)) {
        a->data = NULL;
        a->len = 0;
        a->type = want;
        return 1;
    }
    if (!get_array(env, v, a)) return 0;
    if (a->type != want) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "wrong typed array type");
        return 0;
    }
    return 1;
}
// The C dtype of a matrix argument: Float32Array, Float64Array, or Uint16Array with `dtype` (F16
// or BF16) for 16-bit values.
static int array_dtype(napi_env env, const Array* a, napi_value dtype_arg, gptq_dtype* out) {
    if (a->type == napi_float32_array) *out = GPTQ_DTYPE_F32;
    else if (a->type == napi_float64_array) *out = GPTQ_DTYPE_F64;
    else if (a->type == napi_uint16_array) {
        int32_t d = -1;
        if (is_nullish(env, dtype_arg) || napi_get_value_int32(env, dtype_arg, &d) != napi_ok ||
            (d != GPTQ_DTYPE_F16 && d != GPTQ_DTYPE_BF16)) {
            throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "a Uint16Array needs dtype F16 or BF16");
            return 0;
        }
        *out = (gptq_dtype)d;
    } else {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a Float32Array, Float64Array or Uint16Array");
        return 0;
    }
    return 1;
}
// Whether `rows` rows of `cols` at `stride` fit in `len` elements (else throws BUFFER_TOO_SMALL).
static int fits(napi_env env, size_t rows, size_t cols, size_t stride, size_t len, const char* what) {
    if (rows == 0) return 1;
    if (stride < cols || (rows - 1) > (SIZE_MAX - cols) / (stride ? stride : 1) || (rows - 1) * stride + cols > len) {
        char m[160];
        snprintf(m, sizeof m, "%s: %zu rows of %zu at stride %zu do not fit its %zu elements", what, rows, cols, stride, len);
        throw_status(env, stride < cols ? GPTQ_STATUS_INVALID_ARGUMENT : GPTQ_STATUS_BUFFER_TOO_SMALL, m);
        return 0;
    }
    return 1;
}
// A JavaScript string as a malloc'ed C string (the caller frees), or NULL after throwing.
static char* get_string(napi_env env, napi_value v) {
    size_t n;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a string");
        return NULL;
    }
    char* s = malloc(n + 1);
    if (!s) {
        throw_status(env, GPTQ_STATUS_OUT_OF_MEMORY, "out of memory");
        return NULL;
    }
    napi_get_value_string_utf8(env, v, s, n + 1, &n);
    return s;
}

// ---- handles ----

enum Kind { HESSIAN, LAYER, CHECKPOINT, WRITER, CUDA_LAYER };
typedef struct {
    void* p;
    enum Kind kind;
} Box;
static void free_handle(Box* b) {
    if (!b->p) return;
    switch (b->kind) {
        case HESSIAN: gptq_hessian_free(b->p); break;
        case LAYER: gptq_layer_free(b->p); break;
        case CHECKPOINT: gptq_checkpoint_close(b->p); break;
        case WRITER: gptq_checkpoint_writer_abort(b->p); break;
        case CUDA_LAYER: gptq_cuda_layer_free(b->p); break;
    }
    b->p = NULL;
}
static void finalize(napi_env env, void* data, void* hint) {
    (void)env;
    (void)hint;
    free_handle(data);
    free(data);
}
static napi_value wrap(napi_env env, void* p, enum Kind kind) {
    Box* b = malloc(sizeof *b);
    if (!b) {
        free_handle(&(Box){p, kind});
        return fail(env, GPTQ_STATUS_OUT_OF_MEMORY, "out of memory");
    }
    b->p = p;
    b->kind = kind;
    napi_value v;
    if (napi_create_external(env, b, finalize, NULL, &v) != napi_ok) {
        free_handle(b);
        free(b);
        return fail(env, GPTQ_STATUS_OUT_OF_MEMORY, "cannot create a handle");
    }
    return v;
}
// The handle's pointer (NULL once closed: the library then reports NULL_POINTER).
static int unwrap(napi_env env, napi_value v, enum Kind kind, void** out) {
    Box* b;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, (void**)&b) != napi_ok || b->kind != kind) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a libgptq handle of the right kind");
        return 0;
    }
    *out = b->p;
    return 1;
}
static napi_value close_handle(napi_env env, napi_callback_info info) {
    ARGS(1);
    Box* b;
    if (napi_get_value_external(env, argv[0], (void**)&b) != napi_ok) return fail(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a handle");
    free_handle(b);
    return NULL;
}

// ---- values out ----

static napi_value num(napi_env env, double d) {
    napi_value v;
    napi_create_double(env, d, &v);
    return v;
}
static napi_value str(napi_env env, const char* s) {
    napi_value v;
    napi_create_string_utf8(env, s ? s : "", NAPI_AUTO_LENGTH, &v);
    return v;
}
static void set(napi_env env, napi_value obj, const char* key, napi_value v) { napi_set_named_property(env, obj, key, v); }
static napi_value props(napi_env env, const gptq_layer_properties* p) {
    napi_value o;
    napi_create_object(env, &o);
    set(env, o, "bits", num(env, p->bits));
    set(env, o, "groupSize", num(env, p->group_size));
    set(env, o, "inFeatures", num(env, (double)p->in_features));
    set(env, o, "outFeatures", num(env, (double)p->out_features));
    set(env, o, "numGroups", num(env, (double)p->num_groups));
    set(env, o, "sym", num(env, p->sym));
    set(env, o, "actOrder", num(env, p->act_order));
    set(env, o, "hasBias", num(env, p->has_bias));
    set(env, o, "qweightRows", num(env, (double)p->qweight_rows));
    set(env, o, "qzerosCols", num(env, (double)p->qzeros_cols));
    return o;
}

// ---- library ----

static napi_value version_number(napi_env env, napi_callback_info info) {
    (void)info;
    return num(env, gptq_version_number());
}
static napi_value version_string(napi_env env, napi_callback_info info) {
    (void)info;
    return str(env, gptq_version_string());
}
static napi_value set_num_threads(napi_env env, napi_callback_info info) {
    ARGS(1);
    size_t n;
    if (!get_size(env, argv[0], &n) || !ok(env, gptq_set_num_threads(n))) return NULL;
    return NULL;
}
static napi_value num_threads(napi_env env, napi_callback_info info) {
    (void)info;
    return num(env, (double)gptq_get_num_threads());
}
static napi_value status_string(napi_env env, napi_callback_info info) {
    ARGS(1);
    int32_t s;
    if (!get_i32(env, argv[0], &s)) return NULL;
    return str(env, gptq_status_string(s));
}

// ---- Hessian ----

static napi_value hessian_new(napi_env env, napi_callback_info info) {
    ARGS(2);
    size_t in;
    int32_t count;
    gptq_hessian* h = NULL;
    if (!get_size(env, argv[0], &in) || !get_i32(env, argv[1], &count) ||
        !ok(env, gptq_hessian_new(in, (gptq_sample_count)count, &h)))
        return NULL;
    return wrap(env, h, HESSIAN);
}
// (x, dtype|null, rows, cols, rowStride)
static napi_value hessian_add_batch(napi_env env, napi_callback_info info) {
    ARGS(6);
    void* h;
    Array x;
    gptq_dtype dt;
    size_t rows, cols, stride;
    if (!unwrap(env, argv[0], HESSIAN, &h) || !get_array(env, argv[1], &x) || !array_dtype(env, &x, argv[2], &dt) ||
        !get_size(env, argv[3], &rows) || !get_size(env, argv[4], &cols) || !get_size(env, argv[5], &stride) ||
        !fits(env, rows, cols, stride, x.len, "x"))
        return NULL;
    ok(env, gptq_hessian_add_batch(h, x.data, dt, rows, cols, stride));
    return NULL;
}
// (h, dtype|null, inFeatures, nSamples, count)
static napi_value hessian_from_dense(napi_env env, napi_callback_info info) {
    ARGS(5);
    Array a;
    gptq_dtype dt;
    size_t in, n;
    int32_t count;
    gptq_hessian* out = NULL;
    if (!get_array(env, argv[0], &a) || !array_dtype(env, &a, argv[1], &dt) || !get_size(env, argv[2], &in) ||
        !get_size(env, argv[3], &n) || !get_i32(env, argv[4], &count) || !fits(env, in, in, in, a.len, "h") ||
        !ok(env, gptq_hessian_from_dense(a.data, dt, in, n, (gptq_sample_count)count, &out)))
        return NULL;
    return wrap(env, out, HESSIAN);
}
static napi_value hessian_merge(napi_env env, napi_callback_info info) {
    ARGS(2);
    void *dst, *src;
    if (!unwrap(env, argv[0], HESSIAN, &dst) || !unwrap(env, argv[1], HESSIAN, &src)) return NULL;
    ok(env, gptq_hessian_merge(dst, src));
    return NULL;
}
static napi_value hessian_info(napi_env env, napi_callback_info info) {
    ARGS(1);
    void* h;
    size_t in = 0;
    uint64_t n = 0;
    if (!unwrap(env, argv[0], HESSIAN, &h) || !ok(env, gptq_hessian_info(h, &in, &n))) return NULL;
    napi_value o;
    napi_create_object(env, &o);
    set(env, o, "inFeatures", num(env, (double)in));
    set(env, o, "nSamples", num(env, (double)n));
    return o;
}
static napi_value hessian_read(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* h;
    Array out;
    if (!unwrap(env, argv[0], HESSIAN, &h) || !get_typed(env, argv[1], napi_float32_array, 0, &out)) return NULL;
    ok(env, gptq_hessian_read(h, out.data, out.len));
    return NULL;
}

// ---- quantization ----

// A gptq_quant_config from the library's defaults overridden by the object's own fields.
static int get_config(napi_env env, napi_value obj, gptq_quant_config* c) {
    if (!ok(env, gptq_quant_config_init(c, sizeof *c))) return 0;
    if (obj == NULL || is_nullish(env, obj)) return 1;
    struct {
        const char* key;
        void* field;
        char kind;  // 'u' uint32, 'i' int32, 'f' float
    } fields[] = {
        {"bits", &c->bits, 'u'},          {"groupSize", &c->group_size, 'i'},
        {"sym", &c->sym, 'i'},            {"descAct", &c->desc_act, 'i'},
        {"staticGroups", &c->static_groups, 'i'}, {"actGroupAware", &c->act_group_aware, 'i'},
        {"dampPercent", &c->damp_percent, 'f'},   {"dampAutoIncrement", &c->damp_auto_increment, 'f'},
        {"blockSize", &c->block_size, 'u'},       {"mse", &c->mse, 'i'},
        {"mseNorm", &c->mse_norm, 'f'},           {"mseGrid", &c->mse_grid, 'u'},
        {"mseMaxShrink", &c->mse_max_shrink, 'f'},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        bool has;
        napi_value v;
        // A failing read (a throwing getter) leaves its exception pending: return at once.
        if (napi_has_named_property(env, obj, fields[i].key, &has) != napi_ok) return 0;
        if (!has) continue;
        if (napi_get_named_property(env, obj, fields[i].key, &v) != napi_ok) return 0;
        double d;
        bool b;
        if (napi_get_value_bool(env, v, &b) == napi_ok) d = b ? 1 : 0;
        else if (napi_get_value_double(env, v, &d) != napi_ok) d = NAN;
        // Integers must be exact and in range (a cast of anything else is undefined in C).
        const int bad = fields[i].kind == 'f'   ? !isfinite(d)
                        : fields[i].kind == 'u' ? !(d >= 0 && d <= 4294967295.0 && d == floor(d))
                                                : !(d >= -2147483648.0 && d <= 2147483647.0 && d == floor(d));
        if (bad) {
            char m[96];
            snprintf(m, sizeof m, "config.%s: expected a %s", fields[i].key, fields[i].kind == 'f' ? "finite number" : "32-bit integer");
            throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, m);
            return 0;
        }
        if (fields[i].kind == 'f') *(float*)fields[i].field = (float)d;
        else if (fields[i].kind == 'u') *(uint32_t*)fields[i].field = (uint32_t)d;
        else *(int32_t*)fields[i].field = (int32_t)d;
    }
    return 1;
}
static napi_value quant_config_default(napi_env env, napi_callback_info info) {
    (void)info;
    gptq_quant_config c;
    if (!get_config(env, NULL, &c)) return NULL;
    napi_value o;
    napi_create_object(env, &o);
    set(env, o, "bits", num(env, c.bits));
    set(env, o, "groupSize", num(env, c.group_size));
    set(env, o, "sym", num(env, c.sym));
    set(env, o, "descAct", num(env, c.desc_act));
    set(env, o, "staticGroups", num(env, c.static_groups));
    set(env, o, "actGroupAware", num(env, c.act_group_aware));
    set(env, o, "dampPercent", num(env, c.damp_percent));
    set(env, o, "dampAutoIncrement", num(env, c.damp_auto_increment));
    set(env, o, "blockSize", num(env, c.block_size));
    set(env, o, "mse", num(env, c.mse));
    set(env, o, "mseNorm", num(env, c.mse_norm));
    set(env, o, "mseGrid", num(env, c.mse_grid));
    set(env, o, "mseMaxShrink", num(env, c.mse_max_shrink));
    return o;
}
// (hessian|null for RTN, weight, dtype|null, outFeatures, inFeatures, rowStride, config|null)
// -> { layer, report } (report null for RTN)
static napi_value quantize(napi_env env, napi_callback_info info) {
    ARGS(7);
    void* h = NULL;
    Array w;
    gptq_dtype dt;
    size_t out_f, in_f, stride;
    gptq_quant_config c;
    const int rtn = is_nullish(env, argv[0]);
    // The config first: its getters are JavaScript that could close the Hessian or detach the
    // weight's buffer, so no handle or array pointer is taken before it has been read.
    if (!get_config(env, argv[6], &c)) return NULL;
    if ((!rtn && !unwrap(env, argv[0], HESSIAN, &h)) || !get_array(env, argv[1], &w) ||
        !array_dtype(env, &w, argv[2], &dt) || !get_size(env, argv[3], &out_f) || !get_size(env, argv[4], &in_f) ||
        !get_size(env, argv[5], &stride) || !fits(env, out_f, in_f, stride, w.len, "weight"))
        return NULL;
    gptq_layer* l = NULL;
    gptq_quant_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    if (rtn ? !ok(env, gptq_quantize_rtn(w.data, dt, out_f, in_f, stride, &c, &l))
            : !ok(env, gptq_quantize(h, w.data, dt, out_f, in_f, stride, &c, &l, &r)))
        return NULL;
    napi_value o, report;
    napi_create_object(env, &o);
    set(env, o, "layer", wrap(env, l, LAYER));
    if (rtn) napi_get_null(env, &report);
    else {
        napi_create_object(env, &report);
        set(env, report, "lossEstimate", num(env, r.loss_estimate));
        set(env, report, "lossGptq", num(env, r.loss_gptq));
        set(env, report, "lossRtn", num(env, r.loss_rtn));
        set(env, report, "dampPercentUsed", num(env, r.damp_percent_used));
        set(env, report, "diagFloorUsed", num(env, r.diag_floor_used));
        set(env, report, "seconds", num(env, r.seconds));
    }
    set(env, o, "report", report);
    return o;
}

// ---- layers ----

static napi_value layer_info(napi_env env, napi_callback_info info) {
    ARGS(1);
    void* l;
    gptq_layer_properties p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    if (!unwrap(env, argv[0], LAYER, &l) || !ok(env, gptq_layer_info(l, &p))) return NULL;
    return props(env, &p);
}
// (layer, format, qweight Int32Array, qzeros Int32Array, scales Uint16Array, gIdx|null, bias|null)
static napi_value layer_export(napi_env env, napi_callback_info info) {
    ARGS(7);
    void* l;
    int32_t format;
    Array qw, qz, sc, gi, bi;
    if (!unwrap(env, argv[0], LAYER, &l) || !get_i32(env, argv[1], &format) ||
        !get_typed(env, argv[2], napi_int32_array, 0, &qw) || !get_typed(env, argv[3], napi_int32_array, 0, &qz) ||
        !get_typed(env, argv[4], napi_uint16_array, 0, &sc) || !get_typed(env, argv[5], napi_int32_array, 1, &gi) ||
        !get_typed(env, argv[6], napi_uint16_array, 1, &bi))
        return NULL;
    ok(env, gptq_layer_export(l, (gptq_format)format, qw.data, qw.len, qz.data, qz.len, sc.data, sc.len, gi.data, gi.len,
                              bi.data, bi.len));
    return NULL;
}
// (desc {bits, groupSize, inFeatures, outFeatures, sym, format}, qweight, qzeros, scales, gIdx|null, bias|null)
static napi_value layer_import(napi_env env, napi_callback_info info) {
    ARGS(6);
    gptq_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    napi_value v;
    size_t bits, in_f, out_f;
    int32_t group, sym, format;
    if (napi_get_named_property(env, argv[0], "bits", &v) != napi_ok || !get_size(env, v, &bits)) return NULL;
    if (napi_get_named_property(env, argv[0], "groupSize", &v) != napi_ok || !get_i32(env, v, &group)) return NULL;
    if (napi_get_named_property(env, argv[0], "inFeatures", &v) != napi_ok || !get_size(env, v, &in_f)) return NULL;
    if (napi_get_named_property(env, argv[0], "outFeatures", &v) != napi_ok || !get_size(env, v, &out_f)) return NULL;
    if (napi_get_named_property(env, argv[0], "sym", &v) != napi_ok) return NULL;
    bool b;
    if (napi_get_value_bool(env, v, &b) == napi_ok) sym = b;
    else if (!get_i32(env, v, &sym)) return NULL;
    if (napi_get_named_property(env, argv[0], "format", &v) != napi_ok || !get_i32(env, v, &format)) return NULL;
    if (bits > UINT32_MAX) return fail(env, GPTQ_STATUS_INVALID_ARGUMENT, "desc.bits out of range");
    d.bits = (uint32_t)bits;
    d.group_size = group;
    d.in_features = in_f;
    d.out_features = out_f;
    d.sym = sym;
    d.format = (gptq_format)format;
    Array qw, qz, sc, gi, bi;
    if (!get_typed(env, argv[1], napi_int32_array, 0, &qw) || !get_typed(env, argv[2], napi_int32_array, 0, &qz) ||
        !get_typed(env, argv[3], napi_uint16_array, 0, &sc) || !get_typed(env, argv[4], napi_int32_array, 1, &gi) ||
        !get_typed(env, argv[5], napi_uint16_array, 1, &bi))
        return NULL;
    gptq_layer* l = NULL;
    if (!ok(env, gptq_layer_import(&d, qw.data, qw.len, qz.data, qz.len, sc.data, sc.len, gi.data, gi.len, bi.data,
                                   bi.len, &l)))
        return NULL;
    return wrap(env, l, LAYER);
}
// (layer, out Float32Array|Float64Array|Uint16Array, dtype|null)
static napi_value layer_dequantize(napi_env env, napi_callback_info info) {
    ARGS(3);
    void* l;
    Array out;
    gptq_dtype dt;
    if (!unwrap(env, argv[0], LAYER, &l) || !get_array(env, argv[1], &out) || !array_dtype(env, &out, argv[2], &dt))
        return NULL;
    ok(env, gptq_layer_dequantize(l, dt, out.data, out.len));
    return NULL;
}
// (layer, a, aDtype|null, m, lda, c, cDtype|null, ldc)
static napi_value gemm(napi_env env, napi_callback_info info) {
    ARGS(8);
    void* l;
    Array a, c;
    gptq_dtype adt, cdt;
    size_t m, lda, ldc;
    gptq_layer_properties p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    if (!unwrap(env, argv[0], LAYER, &l) || !get_array(env, argv[1], &a) || !array_dtype(env, &a, argv[2], &adt) ||
        !get_size(env, argv[3], &m) || !get_size(env, argv[4], &lda) || !get_array(env, argv[5], &c) ||
        !array_dtype(env, &c, argv[6], &cdt) || !get_size(env, argv[7], &ldc))
        return NULL;
    // The shape, for the length checks (a closed layer: the library reports it below).
    if (l && !ok(env, gptq_layer_info(l, &p))) return NULL;
    if (l && (!fits(env, m, p.in_features, lda, a.len, "a") || !fits(env, m, p.out_features, ldc, c.len, "c")))
        return NULL;
    ok(env, gptq_gemm(l, a.data, adt, m, lda, c.data, cdt, ldc));
    return NULL;
}

// ---- checkpoints ----

// (checkpoint, name) arguments: the handle into *c and the name as a malloc'ed string (the caller
// frees), or NULL after throwing.
static char* checkpoint_and_name(napi_env env, napi_value* argv, void** c) {
    return unwrap(env, argv[0], CHECKPOINT, c) ? get_string(env, argv[1]) : NULL;
}
static napi_value checkpoint_open(napi_env env, napi_callback_info info) {
    ARGS(1);
    char* path = get_string(env, argv[0]);
    if (!path) return NULL;
    gptq_checkpoint* c = NULL;
    const int good = ok(env, gptq_checkpoint_open(path, &c));
    free(path);
    return good ? wrap(env, c, CHECKPOINT) : NULL;
}
static napi_value checkpoint_num_layers(napi_env env, napi_callback_info info) {
    ARGS(1);
    void* c;
    size_t n;
    if (!unwrap(env, argv[0], CHECKPOINT, &c) || !ok(env, gptq_checkpoint_num_layers(c, &n))) return NULL;
    return num(env, (double)n);
}
static napi_value checkpoint_layer_name(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* c;
    size_t i;
    const char* name;
    if (!unwrap(env, argv[0], CHECKPOINT, &c) || !get_size(env, argv[1], &i) ||
        !ok(env, gptq_checkpoint_layer_name(c, i, &name)))
        return NULL;
    return str(env, name);
}
static napi_value checkpoint_layer_info(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* c;
    char* name = checkpoint_and_name(env, argv, &c);
    if (!name) return NULL;
    gptq_layer_properties p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    const int good = ok(env, gptq_checkpoint_layer_info(c, name, &p));
    free(name);
    return good ? props(env, &p) : NULL;
}
static napi_value checkpoint_get_layer(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* c;
    char* name = checkpoint_and_name(env, argv, &c);
    if (!name) return NULL;
    gptq_layer* l = NULL;
    const int good = ok(env, gptq_checkpoint_get_layer(c, name, &l));
    free(name);
    return good ? wrap(env, l, LAYER) : NULL;
}
static napi_value checkpoint_num_tensors(napi_env env, napi_callback_info info) {
    ARGS(1);
    void* c;
    size_t n;
    if (!unwrap(env, argv[0], CHECKPOINT, &c) || !ok(env, gptq_checkpoint_num_tensors(c, &n))) return NULL;
    return num(env, (double)n);
}
// A tensor view as { name, dtype, shape, data: Buffer (a copy: the view dies with the checkpoint) }.
static napi_value tensor_object(napi_env env, const gptq_tensor_view* v) {
    napi_value o, shape, data;
    napi_create_object(env, &o);
    set(env, o, "name", str(env, v->name));
    set(env, o, "dtype", str(env, v->dtype));
    napi_create_array_with_length(env, v->ndim, &shape);
    for (size_t i = 0; i < v->ndim; i++) napi_set_element(env, shape, (uint32_t)i, num(env, (double)v->shape[i]));
    set(env, o, "shape", shape);
    void* copy;
    napi_create_buffer_copy(env, v->nbytes, v->data, &copy, &data);
    set(env, o, "data", data);
    return o;
}
static napi_value checkpoint_tensor(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* c;
    size_t i;
    gptq_tensor_view v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    if (!unwrap(env, argv[0], CHECKPOINT, &c) || !get_size(env, argv[1], &i) || !ok(env, gptq_checkpoint_tensor(c, i, &v)))
        return NULL;
    return tensor_object(env, &v);
}
static napi_value checkpoint_find_tensor(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* c;
    char* name = checkpoint_and_name(env, argv, &c);
    if (!name) return NULL;
    gptq_tensor_view v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    const int good = ok(env, gptq_checkpoint_find_tensor(c, name, &v));
    free(name);
    return good ? tensor_object(env, &v) : NULL;
}
static napi_value checkpoint_config(napi_env env, napi_callback_info info) {
    ARGS(1);
    void* c;
    const char* json;
    if (!unwrap(env, argv[0], CHECKPOINT, &c) || !ok(env, gptq_checkpoint_config(c, &json))) return NULL;
    return str(env, json);
}
// (dir, quantConfigJson, options {format, maxShardSize, sourceConfigJson} | null)
static napi_value writer_new(napi_env env, napi_callback_info info) {
    ARGS(3);
    gptq_checkpoint_write_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.format = GPTQ_FORMAT_V1;
    char* source = NULL;
    const int has_options = !is_nullish(env, argv[2]);
    if (has_options) {
        napi_value v;
        bool has;
        int32_t format;
        size_t shard;
        if (napi_has_named_property(env, argv[2], "format", &has) != napi_ok) return NULL;
        if (has && (napi_get_named_property(env, argv[2], "format", &v) != napi_ok || !get_i32(env, v, &format))) return NULL;
        if (has) o.format = (gptq_format)format;
        if (napi_has_named_property(env, argv[2], "maxShardSize", &has) != napi_ok) return NULL;
        if (has && (napi_get_named_property(env, argv[2], "maxShardSize", &v) != napi_ok || !get_size(env, v, &shard))) return NULL;
        if (has) o.max_shard_size = shard;
        if (napi_has_named_property(env, argv[2], "sourceConfigJson", &has) != napi_ok) return NULL;
        if (has) {
            if (napi_get_named_property(env, argv[2], "sourceConfigJson", &v) != napi_ok) return NULL;
            if (!(source = get_string(env, v))) return NULL;
            o.source_config_json = source;
        }
    }
    char* dir = get_string(env, argv[0]);
    char* cfg = dir ? get_string(env, argv[1]) : NULL;
    gptq_checkpoint_writer* w = NULL;
    const int good = dir && cfg && ok(env, gptq_checkpoint_writer_new(dir, cfg, has_options ? &o : NULL, &w));
    free(dir);
    free(cfg);
    free(source);
    return good ? wrap(env, w, WRITER) : NULL;
}
static napi_value writer_add_layer(napi_env env, napi_callback_info info) {
    ARGS(3);
    void *w, *l;
    if (!unwrap(env, argv[0], WRITER, &w) || !unwrap(env, argv[2], LAYER, &l)) return NULL;
    char* name = get_string(env, argv[1]);
    if (!name) return NULL;
    ok(env, gptq_checkpoint_writer_add_layer(w, name, l));
    free(name);
    return NULL;
}
// (writer, name, dtype, shape number[], data TypedArray|Buffer)
static napi_value writer_add_tensor(napi_env env, napi_callback_info info) {
    ARGS(5);
    // The shape first: its elements may be getters (JavaScript that could close the writer or
    // detach the data's buffer), so no handle or pointer is taken before it has been read.
    uint32_t ndim;
    if (napi_get_array_length(env, argv[3], &ndim) != napi_ok) return fail(env, GPTQ_STATUS_INVALID_ARGUMENT, "shape: expected an array");
    size_t* shape = calloc(ndim + 1, sizeof *shape);
    if (!shape) return fail(env, GPTQ_STATUS_OUT_OF_MEMORY, "out of memory");
    for (uint32_t i = 0; i < ndim; i++) {
        napi_value v;
        if (napi_get_element(env, argv[3], i, &v) != napi_ok || !get_size(env, v, &shape[i])) {
            free(shape);
            return NULL;
        }
    }
    char* name = get_string(env, argv[1]);
    char* dtype = name ? get_string(env, argv[2]) : NULL;
    void* w;
    Array data;
    if (name && dtype && unwrap(env, argv[0], WRITER, &w) && get_array(env, argv[4], &data)) {
        // Bytes: the element count times the element size (napi_typedarray_type order).
        static const size_t sizes[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8};
        const size_t size = (size_t)data.type < sizeof sizes / sizeof sizes[0] ? sizes[data.type] : 1;
        ok(env, gptq_checkpoint_writer_add_tensor(w, name, dtype, shape, ndim, data.data, data.len * size));
    }
    free(name);
    free(dtype);
    free(shape);
    return NULL;
}
// Commits the files; the writer is spent whether or not this throws.
static napi_value writer_finish(napi_env env, napi_callback_info info) {
    ARGS(1);
    Box* b;
    napi_valuetype t;
    if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external || napi_get_value_external(env, argv[0], (void**)&b) != napi_ok || b->kind != WRITER)
        return fail(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a checkpoint writer");
    void* w = b->p;
    b->p = NULL;
    ok(env, gptq_checkpoint_writer_finish(w));
    return NULL;
}

// ---- CUDA (device addresses and streams as BigInt) ----

static int get_u64(napi_env env, napi_value v, uint64_t* out) {
    bool lossless;
    if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok || !lossless) {
        throw_status(env, GPTQ_STATUS_INVALID_ARGUMENT, "expected a BigInt device address or stream");
        return 0;
    }
    return 1;
}
static napi_value cuda_device_count(napi_env env, napi_callback_info info) {
    (void)info;
    int32_t n = 0;
    if (!ok(env, gptq_cuda_device_count(&n))) return NULL;
    return num(env, n);
}
static napi_value cuda_init(napi_env env, napi_callback_info info) {
    ARGS(1);
    int32_t d;
    if (!get_i32(env, argv[0], &d)) return NULL;
    ok(env, gptq_cuda_init(d));
    return NULL;
}
static napi_value cuda_layer_new(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* l;
    int32_t d;
    gptq_cuda_layer* out = NULL;
    if (!unwrap(env, argv[0], LAYER, &l) || !get_i32(env, argv[1], &d) || !ok(env, gptq_cuda_layer_new(l, d, &out)))
        return NULL;
    return wrap(env, out, CUDA_LAYER);
}
static napi_value cuda_workspace_size(napi_env env, napi_callback_info info) {
    ARGS(2);
    void* l;
    size_t m, bytes;
    if (!unwrap(env, argv[0], CUDA_LAYER, &l) || !get_size(env, argv[1], &m) || !ok(env, gptq_cuda_workspace_size(l, m, &bytes)))
        return NULL;
    return num(env, (double)bytes);
}
// (layer, a, dtype, m, lda, c, ldc, workspace, workspaceBytes, stream)
static napi_value cuda_gemm(napi_env env, napi_callback_info info) {
    ARGS(10);
    void* l;
    uint64_t a, c, ws, stream;
    int32_t dt;
    size_t m, lda, ldc, wsb;
    if (!unwrap(env, argv[0], CUDA_LAYER, &l) || !get_u64(env, argv[1], &a) || !get_i32(env, argv[2], &dt) ||
        !get_size(env, argv[3], &m) || !get_size(env, argv[4], &lda) || !get_u64(env, argv[5], &c) ||
        !get_size(env, argv[6], &ldc) || !get_u64(env, argv[7], &ws) || !get_size(env, argv[8], &wsb) ||
        !get_u64(env, argv[9], &stream))
        return NULL;
    ok(env, gptq_cuda_gemm(l, (const void*)(uintptr_t)a, (gptq_dtype)dt, m, lda, (void*)(uintptr_t)c, ldc,
                           (void*)(uintptr_t)ws, wsb, (struct CUstream_st*)(uintptr_t)stream));
    return NULL;
}
static napi_value cuda_dequantize(napi_env env, napi_callback_info info) {
    ARGS(3);
    void* l;
    uint64_t out, stream;
    if (!unwrap(env, argv[0], CUDA_LAYER, &l) || !get_u64(env, argv[1], &out) || !get_u64(env, argv[2], &stream)) return NULL;
    ok(env, gptq_cuda_dequantize(l, (void*)(uintptr_t)out, (struct CUstream_st*)(uintptr_t)stream));
    return NULL;
}

// ---- module ----

static napi_value init(napi_env env, napi_value exports) {
    const napi_property_descriptor fns[] = {
#define FN(name, f) {name, NULL, f, NULL, NULL, NULL, napi_default, NULL}
        FN("versionNumber", version_number),
        FN("versionString", version_string),
        FN("setNumThreads", set_num_threads),
        FN("numThreads", num_threads),
        FN("statusString", status_string),
        FN("close", close_handle),
        FN("hessianNew", hessian_new),
        FN("hessianAddBatch", hessian_add_batch),
        FN("hessianFromDense", hessian_from_dense),
        FN("hessianMerge", hessian_merge),
        FN("hessianInfo", hessian_info),
        FN("hessianRead", hessian_read),
        FN("quantConfigDefault", quant_config_default),
        FN("quantize", quantize),
        FN("layerInfo", layer_info),
        FN("layerExport", layer_export),
        FN("layerImport", layer_import),
        FN("layerDequantize", layer_dequantize),
        FN("gemm", gemm),
        FN("checkpointOpen", checkpoint_open),
        FN("checkpointNumLayers", checkpoint_num_layers),
        FN("checkpointLayerName", checkpoint_layer_name),
        FN("checkpointLayerInfo", checkpoint_layer_info),
        FN("checkpointGetLayer", checkpoint_get_layer),
        FN("checkpointNumTensors", checkpoint_num_tensors),
        FN("checkpointTensor", checkpoint_tensor),
        FN("checkpointFindTensor", checkpoint_find_tensor),
        FN("checkpointConfig", checkpoint_config),
        FN("writerNew", writer_new),
        FN("writerAddLayer", writer_add_layer),
        FN("writerAddTensor", writer_add_tensor),
        FN("writerFinish", writer_finish),
        FN("cudaDeviceCount", cuda_device_count),
        FN("cudaInit", cuda_init),
        FN("cudaLayerNew", cuda_layer_new),
        FN("cudaWorkspaceSize", cuda_workspace_size),
        FN("cudaGemm", cuda_gemm),
        FN("cudaDequantize", cuda_dequantize),
#undef FN
    };
    napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
    return exports;
}
NAPI_MODULE(gptq, init)
