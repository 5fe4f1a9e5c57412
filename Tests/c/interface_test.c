/*
 * seqpar.h from C under mpirun: a plan on the caller's own communicator (a split of the world, so
 * seqpar never assumes MPI_COMM_WORLD), causal GQA forward and backward against a plain double
 * reference of the whole sequence on every rank, strided Q rows, and the refusals (a NULL buffer on
 * one rank, bad options) coming back as codes on every rank with a message, the process alive.
 * Built and run by the PythonInterfaceTests (Launch/test); prints one line per rank, exits 1 on any
 * failure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seqpar.h"

enum { T = 77, H = 4, KV = 2, D = 32 };

static int failures = 0, checks = 0;
static int rank = 0;

static void expect(int condition, const char *what) {
    checks++;
    if (!condition) {
        failures++;
        fprintf(stderr, "rank %d: FAILED: %s\n", rank, what);
    }
}

static float value(unsigned seed, long i) {
    unsigned x = (unsigned)(i * 2654435761u) ^ (seed * 40503u);
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    return (float)((x % 20001) / 10000.0 - 1.0);
}

/* Causal GQA attention and its gradients over the whole sequence, in double. */
static void reference(const float *q, const float *k, const float *v, const float *dO, double *o, double *dq, double *dk, double *dv) {
    double scale = 1.0 / sqrt((double)D);
    double *p = malloc(sizeof(double) * T);
    memset(dk, 0, sizeof(double) * T * KV * D);
    memset(dv, 0, sizeof(double) * T * KV * D);
    for (int h = 0; h < H; h++) {
        int g = h / (H / KV);
        for (int i = 0; i < T; i++) {
            double m = -INFINITY, sum = 0, delta = 0;
            for (int j = 0; j <= i; j++) {
                double s = 0;
                for (int e = 0; e < D; e++) s += (double)q[(i * H + h) * D + e] * k[(j * KV + g) * D + e];
                p[j] = s * scale;
                if (p[j] > m) m = p[j];
            }
            for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - m));
            for (int e = 0; e < D; e++) {
                double acc = 0;
                for (int j = 0; j <= i; j++) acc += p[j] / sum * v[(j * KV + g) * D + e];
                o[(i * H + h) * D + e] = acc;
                delta += acc * dO[(i * H + h) * D + e];
            }
            for (int e = 0; e < D; e++) dq[(i * H + h) * D + e] = 0;
            for (int j = 0; j <= i; j++) {
                double pj = p[j] / sum, dp = 0;
                for (int e = 0; e < D; e++) dp += (double)dO[(i * H + h) * D + e] * v[(j * KV + g) * D + e];
                double ds = pj * (dp - delta);
                for (int e = 0; e < D; e++) {
                    dq[(i * H + h) * D + e] += ds * k[(j * KV + g) * D + e] * scale;
                    dk[(j * KV + g) * D + e] += ds * q[(i * H + h) * D + e] * scale;
                    dv[(j * KV + g) * D + e] += pj * dO[(i * H + h) * D + e];
                }
            }
        }
    }
    free(p);
}

static double worst(const float *mine, const double *ref, const long *rows, long count, int width) {
    double largest = 1e-30, error = 0;
    for (long r = 0; r < count; r++)
        for (int e = 0; e < width; e++) {
            double x = ref[rows[r] * width + e];
            if (fabs(x) > largest) largest = fabs(x);
            if (fabs(mine[r * width + e] - x) > error) error = fabs(mine[r * width + e] - x);
        }
    return error / largest;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int world_rank, world_size;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    MPI_Comm mine;
    MPI_Comm_split(MPI_COMM_WORLD, 0, world_size - world_rank, &mine); /* reversed ranks: not the world's numbering */
    MPI_Comm_rank(mine, &rank);
    int size;
    MPI_Comm_size(mine, &size);
    const char *strategy = argc > 1 ? argv[1] : "zigzag";

    seqpar_options options;
    seqpar_options_init(&options);
    expect(options.threads == 1 && options.strategy == NULL && options.dtype == SEQPAR_F32, "seqpar_options_init's defaults");
    options.strategy = strategy;
    options.tokens = T; options.heads = H; options.kv_heads = KV; options.head_dim = D; options.causal = 1;
    seqpar_plan *plan = NULL;
    char message[2048];
    int code = seqpar_plan_create(mine, &options, &plan, message, sizeof message);
    expect(code == SEQPAR_OK && plan != NULL, message);
    if (!plan) { MPI_Finalize(); return 1; }

    long rows = (long)seqpar_plan_rows(plan), *position = malloc(sizeof(long) * (rows + 1)), n = 0;
    for (int64_t r = 0; r < seqpar_plan_range_count(plan); r++) {
        int64_t start, stop;
        expect(seqpar_plan_range(plan, r, &start, &stop) == SEQPAR_OK, "seqpar_plan_range");
        for (int64_t p = start; p < stop; p++) position[n++] = (long)p;
    }
    expect(n == rows, "the ranges hold seqpar_plan_rows rows");
    expect(seqpar_plan_range(plan, 99, NULL, NULL) == SEQPAR_ERROR_INPUT && strstr(seqpar_plan_error(plan), "range 99"), "a range that does not exist is refused");

    /* The whole sequence on every rank (for the reference), and this rank's rows; Q rows strided. */
    float *q = malloc(sizeof(float) * T * H * D), *k = malloc(sizeof(float) * T * KV * D), *v = malloc(sizeof(float) * T * KV * D), *dO = malloc(sizeof(float) * T * H * D);
    for (long i = 0; i < T * H * D; i++) { q[i] = value(1, i); dO[i] = value(4, i); }
    for (long i = 0; i < T * KV * D; i++) { k[i] = value(2, i); v[i] = value(3, i); }
    long qstride = H * D + 5;
    float *mq = calloc(rows * qstride + 1, sizeof(float)), *mk = malloc(sizeof(float) * (rows * KV * D + 1)), *mv = malloc(sizeof(float) * (rows * KV * D + 1));
    float *mdo = malloc(sizeof(float) * (rows * H * D + 1));
    for (long r = 0; r < rows; r++) {
        memcpy(mq + r * qstride, q + position[r] * H * D, sizeof(float) * H * D);
        memcpy(mdo + r * H * D, dO + position[r] * H * D, sizeof(float) * H * D);
        memcpy(mk + r * KV * D, k + position[r] * KV * D, sizeof(float) * KV * D);
        memcpy(mv + r * KV * D, v + position[r] * KV * D, sizeof(float) * KV * D);
    }
    float *o = malloc(sizeof(float) * (rows * H * D + 1)), *lse = malloc(sizeof(float) * (H * rows + 1));
    float *dq = malloc(sizeof(float) * (rows * H * D + 1)), *dk = malloc(sizeof(float) * (rows * KV * D + 1)), *dv = malloc(sizeof(float) * (rows * KV * D + 1));
    code = seqpar_forward(plan, rows, mq, qstride, mk, KV * D, mv, KV * D, o, H * D, lse);
    expect(code == SEQPAR_OK, seqpar_plan_error(plan));
    code = seqpar_backward(plan, rows, mq, qstride, mk, KV * D, mv, KV * D, o, H * D, lse, mdo, H * D, dq, H * D, dk, KV * D, dv, KV * D);
    expect(code == SEQPAR_OK, seqpar_plan_error(plan));
    double *ro = malloc(sizeof(double) * T * H * D), *rdq = malloc(sizeof(double) * T * H * D), *rdk = malloc(sizeof(double) * T * KV * D), *rdv = malloc(sizeof(double) * T * KV * D);
    reference(q, k, v, dO, ro, rdq, rdk, rdv);
    double eo = worst(o, ro, position, rows, H * D), eq = worst(dq, rdq, position, rows, H * D);
    double ek = worst(dk, rdk, position, rows, KV * D), ev = worst(dv, rdv, position, rows, KV * D);
    expect(eo < 2e-5, "O against double");
    expect(eq < 1e-4 && ek < 1e-4 && ev < 1e-4, "dQ, dK, dV against double");

    /* A NULL buffer on the last rank only: every rank gets the code and a message naming it. */
    code = seqpar_forward(plan, rows, mq, qstride, rank == size - 1 ? NULL : mk, KV * D, mv, KV * D, o, H * D, lse);
    char expected[64];
    snprintf(expected, sizeof expected, "rank %d: K is a null pointer", size - 1);
    expect(code == SEQPAR_ERROR_INPUT && strstr(seqpar_plan_error(plan), expected) != NULL, "a NULL K on one rank is refused on every rank");
    code = seqpar_forward(plan, rows + 1, mq, qstride, mk, KV * D, mv, KV * D, o, H * D, lse);
    expect(code == SEQPAR_ERROR_INPUT && strstr(seqpar_plan_error(plan), "this rank holds") != NULL, "a wrong row count is refused");
    code = seqpar_forward(plan, rows, mq, 3, mk, KV * D, mv, KV * D, o, H * D, lse);
    expect(rows <= 1 || (code == SEQPAR_ERROR_INPUT && strstr(seqpar_plan_error(plan), "row stride is 3") != NULL), "a short stride is refused");
    code = seqpar_forward(plan, rows, mq, qstride, mk, KV * D, mv, KV * D, o, H * D, lse);
    expect(code == SEQPAR_OK && strcmp(seqpar_plan_error(plan), "") == 0, "the plan works after refusals");
    seqpar_plan_destroy(plan);

    /* Options refused on every rank, with the reason. */
    seqpar_plan *refused = (seqpar_plan *)1;
    options.kv_heads = 3;
    code = seqpar_plan_create(mine, &options, &refused, message, sizeof message);
    expect(code == SEQPAR_ERROR_INPUT && refused == NULL && strstr(message, "3") != NULL, "heads not a multiple of kv heads is refused");
    options.kv_heads = KV;
    options.strategy = "spiral";
    code = seqpar_plan_create(mine, &options, &refused, message, sizeof message);
    expect(code == SEQPAR_ERROR_INPUT && strstr(message, "strategy 'spiral' is not one of") != NULL, "an unknown strategy is refused");
    options.strategy = strategy;
    int64_t offsets[] = {0, 10, 5, T};
    options.cu_seqlens = offsets; options.documents = 3;
    code = seqpar_plan_create(mine, &options, &refused, message, sizeof message);
    expect(code == SEQPAR_ERROR_INPUT && strstr(message, "cu_seqlens") != NULL, "decreasing cu_seqlens are refused");
    options.cu_seqlens = NULL; options.documents = 0;
    options.tokens = rank == 0 ? T + 1 : T;
    code = seqpar_plan_create(mine, &options, &refused, message, sizeof message);
    expect(size == 1 || (code == SEQPAR_ERROR_INPUT && strstr(message, "different options") != NULL), "ranks given different options are refused");
    code = seqpar_plan_create(mine, &options, &refused, NULL, 0);
    expect(size == 1 || code == SEQPAR_ERROR_INPUT, "a refusal without a message buffer");

    printf("interface_test rank %d of %d (%s): %d checks, %d failed; O %.2e, dQ %.2e, dK %.2e, dV %.2e against double\n",
           rank, size, strategy, checks, failures, eo, eq, ek, ev);
    int all_checks = 0, all_failures = 0;
    MPI_Reduce(&checks, &all_checks, 1, MPI_INT, MPI_SUM, 0, mine);
    MPI_Reduce(&failures, &all_failures, 1, MPI_INT, MPI_SUM, 0, mine);
    if (rank == 0) printf("interface_test: %d ranks, %d checks in all, %d failed\n", size, all_checks, all_failures);
    MPI_Comm_free(&mine);
    MPI_Finalize();
    return failures ? 1 : 0;
}
