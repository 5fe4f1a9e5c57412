/*
 * seqpar's C interface: exact softmax attention over a sequence sharded across the ranks of an MPI
 * communicator that the calling program owns, forward and backward, on the caller's buffers.
 *
 * Link with -lSeqparC (the shared library `swift build -c release --product SeqparC` makes, in
 * .build/release) and the program's own MPI (Open MPI, the one seqpar was built against).
 *
 *     seqpar_options options;
 *     seqpar_options_init(&options);                  // defaults: zigzag, no mask, f32, 1 thread
 *     options.tokens = 100000; options.heads = 8; options.kv_heads = 2; options.head_dim = 64;
 *     options.causal = 1;
 *     seqpar_plan *plan;
 *     char message[1024];
 *     if (seqpar_plan_create(MPI_COMM_WORLD, &options, &plan, message, sizeof message) != SEQPAR_OK)
 *         fprintf(stderr, "%s\n", message);          // the same verdict on every rank
 *     // this rank holds global rows seqpar_plan_range(plan, i, ...) for i < seqpar_plan_range_count(plan),
 *     // stored back to back in that order: seqpar_plan_rows(plan) rows of Q, K, V, O, dO, dQ, dK, dV
 *     seqpar_forward(plan, q, q_stride, k, k_stride, v, v_stride, o, o_stride, lse);
 *     seqpar_plan_destroy(plan);
 *
 * Layout. A tensor's rows are this rank's tokens, in the order of its ranges; a row holds
 * [heads, head_dim] elements (Q, O, dO, dQ) or [kv_heads, head_dim] (K, V, dK, dV), contiguous, and
 * row r begins r * row_stride elements after the pointer (row_stride >= the row's width; a larger
 * stride reads rows out of a wider buffer, such as one slice of a fused QKV projection). Elements
 * are the plan's dtype (bf16 and f16 as their 16-bit patterns, little-endian). LSE, the log-sum-exp
 * of each row's scores (natural log, scores already scaled), is float32 [heads, rows], contiguous.
 *
 * Calls. Every function taking a plan is collective over the plan's communicator: every rank calls
 * it, in the same order. Inputs are checked on every rank before any data moves; when any rank
 * finds a problem (a null pointer, a short stride, a wrong row count) every rank returns the same
 * nonzero code, and seqpar_plan_error(plan) names the rank and what was expected. Nothing in seqpar
 * aborts the caller's process for bad input.
 *
 * Copies. The inputs are read (and, for bf16/f16, widened to float32) once into the plan's own
 * shard, which is what the strategies circulate; outputs are written from seqpar's float32 result,
 * rounded to the dtype to nearest even.
 *
 * Threads. A plan may be used by one thread at a time. seqpar makes MPI calls on the calling thread
 * (MPI_THREAD_FUNNELED suffices when that is always the main thread; MPI_THREAD_SERIALIZED when it
 * is not); plans on different communicators may run concurrently only under MPI_THREAD_MULTIPLE.
 * options.threads sets the compute threads inside each call. The error text of a plan belongs to it.
 */
#ifndef SEQPAR_H
#define SEQPAR_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
enum {
    SEQPAR_OK = 0,
    /* bad options or buffers on this rank or another, or a problem the strategy cannot split over
       these ranks (or has no backward for): nothing was computed */
    SEQPAR_ERROR_INPUT = 1,
    SEQPAR_ERROR_MPI = 2 /* an MPI call failed */
};

/* Element types of Q, K, V, O and the gradients. */
typedef enum { SEQPAR_F32 = 0, SEQPAR_BF16 = 1, SEQPAR_F16 = 2 } seqpar_dtype;

typedef struct seqpar_options {
    /* "ring", "zigzag" (default when NULL), "heads", "mesh", "s2" (with the s2 mask below). */
    const char *strategy;
    int64_t tokens;   /* the whole sequence */
    int64_t heads;    /* query heads */
    int64_t kv_heads; /* K/V heads (GQA/MQA): divides heads; 0 means heads */
    int64_t head_dim;
    double scale; /* softmax scale; 0 means 1/sqrt(head_dim) */
    int causal;   /* nonzero: query i sees keys j <= i */
    int64_t window; /* > 0: sliding window, query i sees i - window < j <= i (implies causal) */
    /* Packed documents: cu_seqlens[0] = 0 < ... < cu_seqlens[documents] = tokens; a query sees only
       keys of its own document (with causal or window inside it). NULL: one document. */
    const int64_t *cu_seqlens;
    int64_t documents;
    seqpar_dtype dtype;
    int threads; /* compute threads per rank; 0 means 1 */
    /* S2-Attention's mask (with strategy "s2" or any other): s2_block > 0 makes it; query block qb
       sees its s2_local nearest blocks and, per head, every s2_stride-th earlier block (causal). */
    int64_t s2_block, s2_local, s2_stride;
} seqpar_options;

typedef struct seqpar_plan seqpar_plan;

/* Fills the defaults (everything zero or NULL but threads = 1: fill tokens, heads, head_dim). */
void seqpar_options_init(seqpar_options *options);

/*
 * Makes a plan on a duplicate of `comm` (seqpar's messages never meet the caller's). Collective over
 * comm. On failure *plan is NULL and `message` (when not NULL) receives the reason, truncated to
 * `capacity` bytes with its terminating zero.
 */
int seqpar_plan_create(MPI_Comm comm, const seqpar_options *options, seqpar_plan **plan, char *message, size_t capacity);

/* Frees the plan and its communicator (collective; call before MPI_Finalize). NULL is ignored. */
void seqpar_plan_destroy(seqpar_plan *plan);

/* Rows this rank holds (the sum of its ranges' lengths). */
int64_t seqpar_plan_rows(const seqpar_plan *plan);

/* How many global token ranges this rank holds, and range `index`: [*start, *stop). */
int64_t seqpar_plan_range_count(const seqpar_plan *plan);
int seqpar_plan_range(const seqpar_plan *plan, int64_t index, int64_t *start, int64_t *stop);

/* How this process multiplies bf16: "oneDNN ..." (bf16 products with float32 accumulation, on a
 * CPU with bf16 units) or "converted to float32 ..." with the reason. Static; never NULL. */
const char *seqpar_bf16_path(void);

/* The message of the plan's last failed call ("" after a success). Valid until the next call. */
const char *seqpar_plan_error(const seqpar_plan *plan);

/*
 * Makes a caller's own check collective: every rank passes its finding (NULL: none); when any rank
 * passed one, every rank gets SEQPAR_ERROR_INPUT and seqpar_plan_error names each such rank and its
 * message. For callers (such as the Python module) that refuse input before calling seqpar_forward
 * or seqpar_backward, so that a refusal on one rank never leaves the others waiting.
 */
int seqpar_plan_agree(seqpar_plan *plan, const char *error);

/*
 * O and LSE of this rank's rows. `rows` is the count of rows the caller's buffers hold (checked
 * against seqpar_plan_rows); strides in elements.
 */
int seqpar_forward(
    seqpar_plan *plan, int64_t rows, const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v,
    int64_t v_stride, void *o, int64_t o_stride, float *lse);

/*
 * dQ, dK and dV of this rank's rows for the output gradient dO, given the O and LSE that
 * seqpar_forward returned for the same inputs. dK and dV hold the gradients of this rank's own K/V
 * rows with every rank's queries counted.
 */
int seqpar_backward(
    seqpar_plan *plan, int64_t rows, const void *q, int64_t q_stride, const void *k, int64_t k_stride, const void *v,
    int64_t v_stride, const void *o, int64_t o_stride, const float *lse, const void *d_o, int64_t d_o_stride, void *dq,
    int64_t dq_stride, void *dk, int64_t dk_stride, void *dv, int64_t dv_stride);

#ifdef __cplusplus
}
#endif

#endif /* SEQPAR_H */
