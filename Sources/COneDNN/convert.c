// float32 to bf16 with the CPU's own instruction (AVX512-BF16's vcvtneps2bf16: round to nearest
// even, NaN kept quiet), 16 values at a time: the bf16 kernel narrows every P it multiplies.

#include "seqpar_onednn.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

__attribute__((target("avx512f,avx512bf16,avx512vl"))) void seqpar_narrow_bf16(const float *source, uint16_t *destination, size_t count) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256bh bits = _mm512_cvtneps_pbh(_mm512_loadu_ps(source + i));
        _mm256_storeu_si256((__m256i *)(destination + i), (__m256i)bits);
    }
    if (i < count) {  // the tail through a masked load: the lanes past the end are not read
        __mmask16 lanes = (__mmask16)((1u << (count - i)) - 1);
        __m256bh bits = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lanes, source + i));
        _mm256_mask_storeu_epi16(destination + i, lanes, (__m256i)bits);
    }
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) void seqpar_split_bf16(const float *source, uint16_t *high, uint16_t *low, size_t count) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512 x = _mm512_loadu_ps(source + i);
        __m256bh upper = _mm512_cvtneps_pbh(x);
        __m512 widened = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)upper), 16));
        __m256bh lower = _mm512_cvtneps_pbh(_mm512_sub_ps(x, widened));
        _mm256_storeu_si256((__m256i *)(high + i), (__m256i)upper);
        _mm256_storeu_si256((__m256i *)(low + i), (__m256i)lower);
    }
    if (i < count) {
        __mmask16 lanes = (__mmask16)((1u << (count - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(lanes, source + i);
        __m256bh upper = _mm512_cvtneps_pbh(x);
        __m512 widened = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)upper), 16));
        __m256bh lower = _mm512_cvtneps_pbh(_mm512_sub_ps(x, widened));
        _mm256_mask_storeu_epi16(high + i, lanes, (__m256i)upper);
        _mm256_mask_storeu_epi16(low + i, lanes, (__m256i)lower);
    }
}

// 2^x for scores in base-2 units, for weights rounded to bf16 next: the range reduction of the
// Swift kernel's vectorExp2Scores and its degree-4 polynomial (vectorExp2ScoresForBF16: the same
// constants and fused multiply-adds, so the same floats where the Swift build fuses them, as
// Launch/setup's AVX2 and AVX-512 builds do); 0 below -125 and for -inf.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static inline __m512 exp2_for_bf16(__m512 x) {
    const __m512 shifter = _mm512_set1_ps(12582912.0f + 127.0f);
    __m512 shifted = _mm512_add_ps(x, shifter);
    __m512 r = _mm512_sub_ps(x, _mm512_sub_ps(shifted, shifter));
    __m512 q = _mm512_fmadd_ps(r, _mm512_set1_ps(9.5828184216e-3f), _mm512_set1_ps(5.5906370288e-2f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(2.4024098866e-1f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(6.9312419983e-1f));
    __m512 p = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
    __m512 two_n = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(shifted), 23));
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.0f), _CMP_LT_OQ);
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_mul_ps(p, two_n));
}

// bf16 bits (16 words) back to the floats they hold.
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m512 widen_bf16(__m256i bits) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void seqpar_exp2_row_bf16(const float *row, float shift, uint16_t *bits, size_t count,
                                                                                         float *sum, float *max) {
    const __m512 m = _mm512_set1_ps(shift);
    __m512 sums = _mm512_setzero_ps(), maxes = _mm512_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 32 <= count; i += 32) {  // two vectors, one two-register conversion
        __m512 x0 = _mm512_sub_ps(_mm512_loadu_ps(row + i), m), x1 = _mm512_sub_ps(_mm512_loadu_ps(row + i + 16), m);
        maxes = _mm512_max_ps(maxes, _mm512_max_ps(x0, x1));
        __m512i both = (__m512i)_mm512_cvtne2ps_pbh(exp2_for_bf16(x1), exp2_for_bf16(x0));  // x0's in the low half
        _mm512_storeu_si512((void *)(bits + i), both);
        sums = _mm512_add_ps(sums, _mm512_add_ps(widen_bf16(_mm512_castsi512_si256(both)), widen_bf16(_mm512_extracti64x4_epi64(both, 1))));
    }
    for (; i < count; i += 16) {  // the rest, 16 or fewer at a time: lanes past the end read as -inf, give 0, are not stored
        size_t left = count - i;
        __mmask16 lanes = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __m512 x = _mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes, row + i), m);
        maxes = _mm512_max_ps(maxes, x);
        __m256i one = (__m256i)_mm512_cvtneps_pbh(exp2_for_bf16(x));
        _mm256_mask_storeu_epi16(bits + i, lanes, one);
        sums = _mm512_add_ps(sums, widen_bf16(one));
    }
    *sum = _mm512_reduce_add_ps(sums);
    *max = _mm512_reduce_max_ps(maxes);
}
