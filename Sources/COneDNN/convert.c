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
