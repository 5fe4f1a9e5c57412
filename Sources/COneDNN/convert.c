// float32 to bf16 with the CPU's own instruction (AVX512-BF16's vcvtneps2bf16: round to nearest
// even, NaN kept quiet), 16 values at a time: the bf16 kernel narrows every P it multiplies.

#include "seqpar_onednn.h"

#include <immintrin.h>
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
