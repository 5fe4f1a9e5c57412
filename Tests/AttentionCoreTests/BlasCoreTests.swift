// BlasCore.decide, the pure function behind seqpar's choice of OpenBLAS kernels, over a table of
// (CPU features, core OpenBLAS reported, user setting) cases, and CPUFeatures' levels.

import BlasRuntime
import Testing

@testable import AttentionCore

@Suite("OpenBLAS core selection")
struct BlasCoreTests {
    static func cpu(_ level: SimdLevel, _ vendor: String = "GenuineIntel", family: Int = 6, model: Int = 207) -> CPUFeatures {
        var cpu = CPUFeatures(vendor: vendor, family: family, model: model)
        cpu.avx = level >= .avx
        (cpu.avx2, cpu.fma) = (level >= .avx2, level >= .avx2)
        if level >= .avx512 { (cpu.avx512f, cpu.avx512bw, cpu.avx512vl, cpu.avx512dq, cpu.avx512cd) = (true, true, true, true, true) }
        cpu.avx512bf16 = level >= .avx512bf16
        return cpu
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let cpu: CPUFeatures
        let reported: String
        var version = (0, 3, 21)
        var user: String? = nil
        var override: String? = nil
        let expected: String?  // the core to switch to; nil: keep
        var testDescription: String {
            "\(cpu.summary), OpenBLAS \(version) chose \(reported)" + (user.map { ", OPENBLAS_CORETYPE=\($0)" } ?? "")
                + (override.map { ", SEQPAR_BLAS_CORE=\($0)" } ?? "")
        }
    }

    static let cases: [Case] = [
        // Sapphire/Emerald Rapids (family 6 model 207) unknown to 0.3.21: Prescott fallback.
        Case(cpu: cpu(.avx512bf16), reported: "Prescott", expected: "Cooperlake"),
        // Skylake-SP/Cascade Lake without BF16, and a library too old for Cooperlake.
        Case(cpu: cpu(.avx512, model: 85), reported: "Prescott", expected: "SkylakeX"),
        Case(cpu: cpu(.avx512bf16), reported: "Prescott", version: (0, 3, 10), expected: "SkylakeX"),
        // AVX2 machines: Zen kernels on AMD, Haswell on Intel.
        Case(cpu: cpu(.avx2, "AuthenticAMD", family: 25, model: 1), reported: "Prescott", expected: "Zen"),
        Case(cpu: cpu(.avx2, model: 151), reported: "Nehalem", expected: "Haswell"),
        Case(cpu: cpu(.avx, model: 42), reported: "Core2", expected: "Sandybridge"),
        // A core below the CPU but not the fallback (Haswell on an AVX-512 CPU) is raised too.
        Case(cpu: cpu(.avx512bf16, "AuthenticAMD", family: 26, model: 2), reported: "Haswell", expected: "Cooperlake"),
        // Already right, or better than seqpar would pick: kept.
        Case(cpu: cpu(.avx512bf16, "AuthenticAMD", family: 26, model: 2), reported: "Cooperlake", expected: nil),
        Case(cpu: cpu(.avx512bf16), reported: "SapphireRapids", expected: nil),
        Case(cpu: cpu(.avx512, model: 85), reported: "SkylakeX", expected: nil),
        Case(cpu: cpu(.avx2, "AuthenticAMD", family: 23, model: 49), reported: "Zen", expected: nil),
        Case(cpu: cpu(.avx2), reported: "Haswell", expected: nil),
        // Nothing better to pick on an SSE-only CPU; an unknown core name is left alone.
        Case(cpu: cpu(.sse, model: 23), reported: "Prescott", expected: nil),
        Case(cpu: cpu(.avx512bf16), reported: "Loongson3R5", expected: nil),
        // The user's OPENBLAS_CORETYPE wins, unless SEQPAR_BLAS_CORE=auto; keep turns it all off.
        Case(cpu: cpu(.avx512bf16), reported: "Haswell", user: "Haswell", expected: nil),
        Case(cpu: cpu(.avx512bf16), reported: "Prescott", user: "Prescott", override: "auto", expected: "Cooperlake"),
        Case(cpu: cpu(.avx512bf16), reported: "Prescott", override: "keep", expected: nil),
        Case(cpu: cpu(.avx512bf16), reported: "Prescott", user: "", expected: "Cooperlake"),  // empty: not set
    ]

    @Test("the decision over a table of CPUs and reported cores", arguments: cases)
    func decide(_ c: Case) {
        let decision = BlasCore.decide(cpu: c.cpu, reportedCore: c.reported, version: c.version, userCoreType: c.user, override: c.override)
        #expect(decision.switchTo == c.expected, "\(decision.reason)")
        #expect(!decision.reason.isEmpty)
        if let core = decision.switchTo {
            #expect(decision.reason.contains("set by seqpar") && decision.reason.contains(c.reported), "\(decision.reason)")
            #expect(BlasCore.level(ofCore: core)! > BlasCore.level(ofCore: c.reported)!)
        }
    }

    @Test("a kept core below the CPU says what the CPU could run")
    func keptBelowSaysSo() {
        let decision = BlasCore.decide(cpu: Self.cpu(.avx512bf16), reportedCore: "Haswell", version: (0, 3, 21), userCoreType: "Haswell")
        #expect(decision.switchTo == nil)
        #expect(
            decision.reason.contains("OPENBLAS_CORETYPE=Haswell set by the user") && decision.reason.contains("could run Cooperlake"),
            "\(decision.reason)")
        let right = BlasCore.decide(cpu: Self.cpu(.avx2), reportedCore: "Haswell", version: (0, 3, 21), userCoreType: "Haswell")
        #expect(!right.reason.contains("could run"), "\(right.reason)")
    }

    @Test("levels: a CPU needs every AVX-512 subset seqpar's build uses")
    func levels() {
        var cpu = Self.cpu(.avx512)
        #expect(cpu.level == .avx512)
        cpu.avx512vl = false
        #expect(cpu.level == .avx2)
        cpu = Self.cpu(.avx2)
        cpu.fma = false
        #expect(cpu.level == .avx)
        #expect(BlasCore.level(ofCore: "skylakex") == .avx512 && BlasCore.level(ofCore: "PRESCOTT") == .sse)
    }

    @Test("this machine: the CPU is read and OpenBLAS reports a core and a version")
    func thisMachine() {
        let cpu = CPUFeatures.current
        #expect(!cpu.vendor.isEmpty && cpu.family > 0)
        #expect(!BlasCore.current.isEmpty)
        #expect(BlasCore.version >= (0, 2, 0), "\(BlasCore.configuration)")
    }
}
