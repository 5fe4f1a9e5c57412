// seqpar_onednn.h over oneDNN's C API: a matmul primitive with the product's strides, alpha as
// its output scale and accumulation as a sum post-op; a user scratchpad and a stream per object,
// so that objects on different threads never share state.

#include "seqpar_onednn.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

// libgomp's, which oneDNN runs its parallel regions on (declared here: omp.h is GCC's header).
extern int omp_get_max_threads(void);
extern void omp_set_num_threads(int);

struct seqpar_bf16_gemm {
    dnnl_primitive_t primitive;
    dnnl_stream_t stream;
    dnnl_memory_t a, b, c, scratchpad;
    void *scratchpad_bytes;
    char implementation[64];
};

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_runtime_error;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static void make_engine(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

#define CHECK(call, what)                                                                   \
    do {                                                                                    \
        dnnl_status_t status_ = (call);                                                     \
        if (status_ != dnnl_success) {                                                      \
            snprintf(error, error_size, "oneDNN %s failed (status %d)", what, (int)status_); \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

seqpar_bf16_gemm *seqpar_bf16_gemm_create(int64_t m, int64_t n, int64_t k, int transposed_a, int transposed_b, int64_t lda, int64_t ldb,
                                          int64_t ldc, float alpha, int accumulate, char *error, size_t error_size) {
    seqpar_bf16_gemm *gemm = calloc(1, sizeof *gemm);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t descriptor = NULL;
    if (!gemm) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    pthread_once(&engine_once, make_engine);
    CHECK(engine_status, "engine creation");
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_dims_t a_dims = {m, k}, a_strides = {transposed_a ? 1 : lda, transposed_a ? lda : 1};
    dnnl_dims_t b_dims = {k, n}, b_strides = {transposed_b ? 1 : ldb, transposed_b ? ldb : 1};
    dnnl_dims_t c_dims = {m, n}, c_strides = {ldc, 1};
    CHECK(dnnl_memory_desc_init_by_strides(&a_md, 2, a_dims, dnnl_bf16, a_strides), "A's descriptor");
    CHECK(dnnl_memory_desc_init_by_strides(&b_md, 2, b_dims, dnnl_bf16, b_strides), "B's descriptor");
    CHECK(dnnl_memory_desc_init_by_strides(&c_md, 2, c_dims, dnnl_f32, c_strides), "C's descriptor");
    dnnl_matmul_desc_t matmul;
    CHECK(dnnl_matmul_desc_init(&matmul, &a_md, &b_md, NULL, &c_md), "matmul descriptor");
    CHECK(dnnl_primitive_attr_create(&attr), "attribute creation");
    CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode");
    if (alpha != 1.0f) CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha), "output scale");
    if (accumulate) {
        CHECK(dnnl_post_ops_create(&post_ops), "post-ops creation");
        CHECK(dnnl_post_ops_append_sum(post_ops, 1.0f), "sum post-op");
        CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops), "post-ops");
    }
    CHECK(dnnl_primitive_desc_create(&descriptor, &matmul, attr, engine, NULL), "matmul primitive descriptor");
    const char *implementation = NULL;
    CHECK(dnnl_primitive_desc_query(descriptor, dnnl_query_impl_info_str, 0, &implementation), "implementation query");
    snprintf(gemm->implementation, sizeof gemm->implementation, "%s", implementation ? implementation : "unknown");
    const dnnl_memory_desc_t *scratchpad_md = dnnl_primitive_desc_query_md(descriptor, dnnl_query_scratchpad_md, 0);
    size_t scratchpad_size = scratchpad_md ? dnnl_memory_desc_get_size(scratchpad_md) : 0;
    CHECK(dnnl_primitive_create(&gemm->primitive, descriptor), "primitive creation");
    CHECK(dnnl_stream_create(&gemm->stream, engine, dnnl_stream_default_flags), "stream creation");
    CHECK(dnnl_memory_create(&gemm->a, &a_md, engine, DNNL_MEMORY_NONE), "A's memory");
    CHECK(dnnl_memory_create(&gemm->b, &b_md, engine, DNNL_MEMORY_NONE), "B's memory");
    CHECK(dnnl_memory_create(&gemm->c, &c_md, engine, DNNL_MEMORY_NONE), "C's memory");
    if (scratchpad_size > 0) {
        gemm->scratchpad_bytes = aligned_alloc(64, (scratchpad_size + 63) / 64 * 64);
        if (!gemm->scratchpad_bytes) {
            snprintf(error, error_size, "out of memory for a %zu-byte scratchpad", scratchpad_size);
            goto fail;
        }
        CHECK(dnnl_memory_create(&gemm->scratchpad, scratchpad_md, engine, gemm->scratchpad_bytes), "scratchpad memory");
    }
    dnnl_primitive_desc_destroy(descriptor);  // the primitive keeps what it needs
    dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    return gemm;
fail:
    if (descriptor) dnnl_primitive_desc_destroy(descriptor);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    seqpar_bf16_gemm_destroy(gemm);
    return NULL;
}

int seqpar_bf16_gemm_run(seqpar_bf16_gemm *gemm, const uint16_t *a, const uint16_t *b, float *c) {
    dnnl_status_t status;
    if ((status = dnnl_memory_set_data_handle(gemm->a, (void *)a)) != dnnl_success) return (int)status;
    if ((status = dnnl_memory_set_data_handle(gemm->b, (void *)b)) != dnnl_success) return (int)status;
    if ((status = dnnl_memory_set_data_handle(gemm->c, c)) != dnnl_success) return (int)status;
    dnnl_exec_arg_t arguments[4] = {
        {DNNL_ARG_SRC, gemm->a}, {DNNL_ARG_WEIGHTS, gemm->b}, {DNNL_ARG_DST, gemm->c}, {DNNL_ARG_SCRATCHPAD, gemm->scratchpad}};
    // One thread: the caller's threads each run their own products (a caller's OpenMP setting is restored).
    int threads = omp_get_max_threads();
    if (threads != 1) omp_set_num_threads(1);
    status = dnnl_primitive_execute(gemm->primitive, gemm->stream, gemm->scratchpad ? 4 : 3, arguments);
    if (threads != 1) omp_set_num_threads(threads);
    return (int)status;
}

const char *seqpar_bf16_gemm_implementation(const seqpar_bf16_gemm *gemm) { return gemm->implementation; }

void seqpar_bf16_gemm_destroy(seqpar_bf16_gemm *gemm) {
    if (!gemm) return;
    if (gemm->a) dnnl_memory_destroy(gemm->a);
    if (gemm->b) dnnl_memory_destroy(gemm->b);
    if (gemm->c) dnnl_memory_destroy(gemm->c);
    if (gemm->scratchpad) dnnl_memory_destroy(gemm->scratchpad);
    if (gemm->stream) dnnl_stream_destroy(gemm->stream);
    if (gemm->primitive) dnnl_primitive_destroy(gemm->primitive);
    free(gemm->scratchpad_bytes);
    free(gemm);
}

const char *seqpar_onednn_version(void) {
    static char text[32];
    const dnnl_version_t *version = dnnl_version();
    snprintf(text, sizeof text, "%d.%d.%d", version->major, version->minor, version->patch);
    return text;
}
