/* seqpar's bf16 GEMM: one product shape as a oneDNN matmul primitive (bf16 operands, float32
 * accumulation and result), made once and run many times on different buffers.
 *
 *   C[m, n] = alpha * A * B + (accumulate ? C : 0)
 *
 * A is [m, k] row-major bf16 bits with rows lda elements apart, or, when transposed_a, the
 * transpose of a row-major [k, m] (rows lda apart: Pᵀ of the backward's Pᵀ·dO); B is [k, n]
 * row-major (ldb), or, when transposed_b, the transpose of a row-major [n, k] (rows ldb apart: the keys of Q·Kᵀ); C is
 * row-major float32 (ldc). Each object runs on the calling thread alone (one OpenMP thread, its
 * own stream and scratchpad): use one object per thread; objects on different threads run
 * concurrently. */
#ifndef SEQPAR_ONEDNN_H
#define SEQPAR_ONEDNN_H

#include <stddef.h>
#include <stdint.h>

typedef struct seqpar_bf16_gemm seqpar_bf16_gemm;

/* NULL when oneDNN cannot make the product; `error` (error_size bytes) then says why. */
seqpar_bf16_gemm *seqpar_bf16_gemm_create(int64_t m, int64_t n, int64_t k, int transposed_a, int transposed_b, int64_t lda, int64_t ldb,
                                          int64_t ldc, float alpha, int accumulate, char *error, size_t error_size);
/* 0 on success, oneDNN's status otherwise. */
int seqpar_bf16_gemm_run(seqpar_bf16_gemm *gemm, const uint16_t *a, const uint16_t *b, float *c);
/* The implementation oneDNN chose, as DNNL_VERBOSE names it ("brg:avx512_core_bf16", "brg:avx512_core_amx", ...). */
const char *seqpar_bf16_gemm_implementation(const seqpar_bf16_gemm *gemm);
void seqpar_bf16_gemm_destroy(seqpar_bf16_gemm *gemm);

/* The bf16 bits of count floats (round to nearest even, NaN kept), by AVX512-BF16's conversion
 * instruction: only on a CPU that has it. */
void seqpar_narrow_bf16(const float *source, uint16_t *destination, size_t count);
/* The same as high + low: high the bf16 bits of each float, low those of the remainder. */
void seqpar_split_bf16(const float *source, uint16_t *high, uint16_t *low, size_t count);

/* One row of the bf16 forward's softmax: e = 2^(row[i] - shift) (scores in base-2 units; 0 below
 * -125), written as bf16 bits into bits[0..<count] by AVX512-BF16's conversion; *sum is the sum of
 * the rounded weights, *max the largest row[i] - shift. Only on a CPU that has AVX512-BF16. */
void seqpar_exp2_row_bf16(const float *row, float shift, uint16_t *bits, size_t count, float *sum, float *max);

/* oneDNN's version, "2.6.3". */
const char *seqpar_onednn_version(void);

#endif
