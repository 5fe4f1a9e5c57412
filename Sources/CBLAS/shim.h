// OpenBLAS's CBLAS interface plus its thread controls and core queries (cblas.h imports into
// Swift as it is), and CPUID, which seqpar reads to check the kernels OpenBLAS picked.
#ifndef SEQPAR_CBLAS_SHIM_H
#define SEQPAR_CBLAS_SHIM_H
#include <cblas.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/// CPUID leaf/subleaf into regs[0..3] = eax, ebx, ecx, edx; returns 0 when the leaf is beyond the CPU's maximum.
static inline int seqpar_cpuid(unsigned leaf, unsigned subleaf, unsigned *regs) {
    return __get_cpuid_count(leaf, subleaf, &regs[0], &regs[1], &regs[2], &regs[3]);
}
/// XCR0: which register states the OS saves (bits 1-2 SSE/AVX, 5-7 AVX-512); 0 without OSXSAVE.
static inline unsigned long long seqpar_xcr0(void) {
    unsigned regs[4];
    if (!__get_cpuid(1, &regs[0], &regs[1], &regs[2], &regs[3]) || !(regs[2] & (1u << 27))) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#else
static inline int seqpar_cpuid(unsigned leaf, unsigned subleaf, unsigned *regs) { (void)leaf; (void)subleaf; regs[0] = regs[1] = regs[2] = regs[3] = 0; return 0; }
static inline unsigned long long seqpar_xcr0(void) { return 0; }
#endif
#endif
