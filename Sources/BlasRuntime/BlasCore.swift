// Which kernels OpenBLAS runs, and making them the right ones for this CPU.
//
// A DYNAMIC_ARCH OpenBLAS picks its kernels ("core") once, when the library loads, from CPUID. A
// library older than the CPU may not know the model and fall back to its slowest x86-64 kernels
// (Debian 12's 0.3.21 runs "Prescott", SSE3, on recent Xeons: a third of the sgemm speed). It reads
// OPENBLAS_CORETYPE at load time, so the fix must happen before the process starts: seqpar
// compares the core OpenBLAS reports with what the CPU offers (`decide`, a pure function), and
// when the core is below the CPU, sets OPENBLAS_CORETYPE and executes itself again, whoever started
// it (Launch/local, a user's own mpirun, srun). A user's own OPENBLAS_CORETYPE always wins, unless
// SEQPAR_BLAS_CORE=auto says seqpar may replace it; SEQPAR_BLAS_CORE=keep turns the check off.
// What it does not do: measure (BlasPeak does), or choose among cores of the same instruction set.

import CBLAS

#if canImport(Glibc)
    import Glibc
#endif

/// The instruction-set level of a CPU, or of the kernels an OpenBLAS core uses.
public enum SimdLevel: Int, Comparable, Sendable, CustomStringConvertible {
    case sse = 0, avx, avx2, avx512, avx512bf16

    public static func < (a: SimdLevel, b: SimdLevel) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .sse: return "SSE"
        case .avx: return "AVX"
        case .avx2: return "AVX2+FMA"
        case .avx512: return "AVX-512"
        case .avx512bf16: return "AVX-512 with BF16"
        }
    }
}

/// What the CPU offers, from CPUID (and XCR0: the OS must save the wide registers).
public struct CPUFeatures: Equatable, Sendable {
    public var vendor: String
    public var family: Int
    public var model: Int
    public var avx = false, avx2 = false, fma = false
    public var avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512cd = false
    public var avx512bf16 = false
    /// AMX tiles with bf16 products (and the OS saving tile state), and AVX512-FP16.
    public var amxBF16 = false, avx512fp16 = false

    public init(vendor: String, family: Int, model: Int) {
        self.vendor = vendor
        self.family = family
        self.model = model
    }

    /// The highest level whose every feature the CPU (and OS) has.
    public var level: SimdLevel {
        if avx512f && avx512bw && avx512vl && avx512dq && avx512cd { return avx512bf16 ? .avx512bf16 : .avx512 }
        if avx2 && fma { return .avx2 }
        return avx ? .avx : .sse
    }

    public var summary: String { "\(vendor) family \(family) model \(model), \(level)" }

    /// The CPU's bf16 and fp16 units.
    public var reducedPrecisionUnits: String {
        let units = [(amxBF16, "AMX-BF16"), (avx512bf16, "AVX512-BF16"), (avx512fp16, "AVX512-FP16")].filter(\.0).map(\.1)
        return units.isEmpty ? "none" : units.joined(separator: ", ")
    }

    /// What seqpar does with bf16 and f16 in this process (`BF16Gemm.path`; f16 is widened to
    /// float32 everywhere), and the CPU's units, in one line for `info`.
    public static var reducedPrecisionPath: String {
        "bf16: \(BF16Gemm.path); f16: converted to float32 as read, float32 GEMM; bf16/fp16 units: \(current.reducedPrecisionUnits)"
    }

    /// This machine's CPU.
    public static let current: CPUFeatures = {
        var regs = [UInt32](repeating: 0, count: 4)
        func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> [UInt32] {
            regs.withUnsafeMutableBufferPointer { _ = seqpar_cpuid(leaf, subleaf, $0.baseAddress!) }
            return regs
        }
        let leaf0 = cpuid(0)
        let vendor = [leaf0[1], leaf0[3], leaf0[2]].map { word in
            String(decoding: (0 ..< 4).map { UInt8(truncatingIfNeeded: word >> (8 * $0)) }, as: UTF8.self)
        }.joined()
        let leaf1 = cpuid(1)
        let baseFamily = Int((leaf1[0] >> 8) & 0xF)
        let family = baseFamily == 0xF ? baseFamily + Int((leaf1[0] >> 20) & 0xFF) : baseFamily
        let model = Int((leaf1[0] >> 4) & 0xF) | ((baseFamily == 6 || baseFamily == 0xF) ? Int((leaf1[0] >> 16) & 0xF) << 4 : 0)
        var cpu = CPUFeatures(vendor: vendor, family: family, model: model)
        let xcr0 = seqpar_xcr0()
        let ymm = xcr0 & 0x6 == 0x6
        let zmm = ymm && xcr0 & 0xE0 == 0xE0
        let tiles = xcr0 & 0x60000 == 0x60000
        let bit = { (word: UInt32, n: UInt32) in word & (1 << n) != 0 }
        cpu.avx = ymm && bit(leaf1[2], 28)
        cpu.fma = ymm && bit(leaf1[2], 12)
        if leaf0[0] >= 7 {
            let leaf7 = cpuid(7)
            cpu.avx2 = ymm && bit(leaf7[1], 5)
            cpu.avx512f = zmm && bit(leaf7[1], 16)
            cpu.avx512dq = zmm && bit(leaf7[1], 17)
            cpu.avx512cd = zmm && bit(leaf7[1], 28)
            cpu.avx512bw = zmm && bit(leaf7[1], 30)
            cpu.avx512vl = zmm && bit(leaf7[1], 31)
            cpu.avx512fp16 = zmm && bit(leaf7[3], 23)
            cpu.amxBF16 = tiles && bit(leaf7[3], 22)
            if leaf7[0] >= 1 { cpu.avx512bf16 = zmm && bit(cpuid(7, 1)[0], 5) }
        }
        return cpu
    }()
}

/// What to do about OpenBLAS's core, and why, in one line a user can read.
public struct BlasCoreDecision: Equatable, Sendable {
    /// The core to set through OPENBLAS_CORETYPE; nil: keep the one in use.
    public var switchTo: String?
    public var reason: String
}

public enum BlasCore {
    /// OpenBLAS's x86-64 core names (as `openblas_get_corename` spells them) and the level of
    /// the kernels each runs. Cores missing here are left alone.
    static let coreLevels: [String: SimdLevel] = [
        "prescott": .sse, "core2": .sse, "penryn": .sse, "dunnington": .sse, "nehalem": .sse, "atom": .sse,
        "athlon": .sse, "opteron": .sse, "opteron(sse3)": .sse, "barcelona": .sse, "nano": .sse, "bobcat": .sse,
        "katmai": .sse, "coppermine": .sse, "northwood": .sse, "banias": .sse,
        "sandybridge": .avx, "bulldozer": .avx, "piledriver": .avx, "steamroller": .avx, "excavator": .avx,
        "haswell": .avx2, "zen": .avx2,
        "skylakex": .avx512,
        "cooperlake": .avx512bf16, "sapphirerapids": .avx512bf16,
    ]

    /// The level of `core`'s kernels; nil for a name seqpar does not know.
    public static func level(ofCore core: String) -> SimdLevel? { coreLevels[core.lowercased()] }

    /// The best core an OpenBLAS of `version` (major, minor, patch) has for `cpu`; nil when none
    /// beats the SSE kernels.
    public static func bestCore(for cpu: CPUFeatures, version: (Int, Int, Int)) -> String? {
        let atLeast = { (v: (Int, Int, Int)) in version >= v }
        switch cpu.level {
        case .avx512bf16 where atLeast((0, 3, 11)): return "Cooperlake"
        case .avx512bf16, .avx512: return atLeast((0, 3, 0)) ? "SkylakeX" : "Haswell"
        case .avx2: return cpu.vendor == "AuthenticAMD" ? "Zen" : "Haswell"
        case .avx: return "Sandybridge"
        case .sse: return nil
        }
    }

    /// The decision, as a pure function of what it depends on.
    /// - Parameters:
    ///   - reportedCore: the core OpenBLAS runs (`openblas_get_corename`).
    ///   - userCoreType: OPENBLAS_CORETYPE as the user set it (nil or empty: not set).
    ///   - override: SEQPAR_BLAS_CORE: "auto" (replace even a user's setting), "keep" (never
    ///     switch), nil (switch unless the user set OPENBLAS_CORETYPE).
    public static func decide(
        cpu: CPUFeatures, reportedCore: String, version: (Int, Int, Int),
        userCoreType: String?, override: String? = nil
    ) -> BlasCoreDecision {
        let best = bestCore(for: cpu, version: version)
        let versionText = "OpenBLAS \(version.0).\(version.1).\(version.2)"
        guard let reported = level(ofCore: reportedCore) else {
            return BlasCoreDecision(reason: "\(versionText) runs \(reportedCore), a core seqpar does not rank; kept")
        }
        let belowCPU = reported < cpu.level && best.map { level(ofCore: $0)! > reported } == true
        let better = best.map { " (this CPU, \(cpu.summary), could run \($0): unset it, or set SEQPAR_BLAS_CORE=auto)" } ?? ""
        if override == "keep" {
            return BlasCoreDecision(reason: "\(reportedCore) kept: SEQPAR_BLAS_CORE=keep" + (belowCPU ? better : ""))
        }
        if let user = userCoreType, !user.isEmpty, override != "auto" {
            return BlasCoreDecision(reason: "\(reportedCore): OPENBLAS_CORETYPE=\(user) set by the user" + (belowCPU ? better : ""))
        }
        guard belowCPU, let best else {
            return BlasCoreDecision(reason: "\(reportedCore), chosen by \(versionText), matches this CPU (\(cpu.summary))")
        }
        return BlasCoreDecision(
            switchTo: best,
            reason: "\(best), set by seqpar: \(versionText) chose \(reportedCore) (\(reported) kernels) on this CPU (\(cpu.summary))")
    }

    /// The core OpenBLAS runs in this process.
    public static var current: String { String(cString: openblas_get_corename()) }

    /// OpenBLAS's build description, e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ... Cooperlake".
    public static var configuration: String { String(cString: openblas_get_config()) }

    /// The library's version from its configuration; (0, 0, 0) when it does not say.
    public static var version: (Int, Int, Int) {
        let words = configuration.split(separator: " ")
        guard let at = words.firstIndex(of: "OpenBLAS"), at + 1 < words.count else { return (0, 0, 0) }
        let parts = words[at + 1].split(separator: ".").map { Int($0.prefix { $0.isNumber }) ?? 0 }
        return (parts.count > 0 ? parts[0] : 0, parts.count > 1 ? parts[1] : 0, parts.count > 2 ? parts[2] : 0)
    }

    /// Set in the environment of the re-executed process: the reason seqpar chose the core.
    static let reasonVariable = "SEQPAR_BLAS_CORE_REASON"

    /// Why OpenBLAS runs the core it runs in this process, in one line.
    public nonisolated(unsafe) private(set) static var reason = ""

    /// To be called first thing in `main`: when OpenBLAS runs kernels below this CPU's, sets
    /// OPENBLAS_CORETYPE and executes this program again with the same arguments (it returns
    /// only when no switch is needed, or when executing again failed). Afterwards `reason` says
    /// what was decided.
    public static func selectAtStartup() {
        let environment = { (name: String) -> String? in getenv(name).map { String(cString: $0) } }
        if let chosen = environment(reasonVariable) {  // the second start: seqpar set the core
            let wanted = environment("OPENBLAS_CORETYPE") ?? ""
            reason =
                current.lowercased() == wanted.lowercased()
                ? chosen : "\(current): seqpar asked OpenBLAS for \(wanted), which it did not take"
            unsetenv(reasonVariable)  // so that processes this one starts decide for themselves
            return
        }
        let decision = decide(
            cpu: .current, reportedCore: current, version: version,
            userCoreType: environment("OPENBLAS_CORETYPE"), override: environment("SEQPAR_BLAS_CORE"))
        reason = decision.reason
        guard let core = decision.switchTo else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv(reasonVariable, decision.reason, 1)
        let arguments = CommandLine.unsafeArgv
        execv("/proc/self/exe", arguments)
        // Not reached unless exec failed: go on with the kernels we have, and say so.
        unsetenv(reasonVariable)
        reason = "\(current): seqpar could not execute itself again to select \(core) (errno \(errno))"
    }
}
