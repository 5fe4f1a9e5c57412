// Which seqpar this is: the version below, and what Launch/setup wrote beside the binary when it
// built it (seqpar-build-info: the git commit, the target CPU). A file read at start-up rather than a
// constant compiled in, so that a new commit does not rebuild every module; a binary built
// without Launch/setup (or copied without the file) says its commit is unknown.

import AttentionCore
import BlasRuntime
import Foundation

enum BuildInfo {
    static let version = "0.3.0"

    /// key=value lines from seqpar-build-info beside the executable.
    static let recorded: [String: String] = {
        guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"),
            let text = try? String(contentsOfFile: (executable as NSString).deletingLastPathComponent + "/seqpar-build-info", encoding: .utf8)
        else { return [:] }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        return fields
    }()

    static var commit: String { recorded["commit"] ?? "unknown (not built by Launch/setup)" }

    /// The target CPU and instruction set the code was compiled for, e.g. "skylake-avx512 (AVX-512)".
    static var builtFor: String { "\(recorded["target_cpu"] ?? "?") (\(builtLevel == .sse ? "baseline" : "\(builtLevel)"))" }

    /// The instruction-set level the code was compiled for (the -D flag Launch/setup passes).
    static var builtLevel: SimdLevel {
        #if SEQPAR_BUILT_FOR_AVX512
            .avx512
        #elseif SEQPAR_BUILT_FOR_AVX2
            .avx2
        #else
            .sse
        #endif
    }

    /// A warning when this CPU runs vector instructions the binary was not built for (a plain
    /// `swift build`): its kernel ran at 0.7 of Launch/setup's at head dim 64; nil otherwise.
    static var belowCPU: String? {
        let cpu = CPUFeatures.current
        let usable: SimdLevel = cpu.level >= .avx512 ? .avx512 : cpu.level >= .avx2 ? .avx2 : .sse
        guard builtLevel < usable else { return nil }
        return "note: this binary was built for \(builtLevel) and this CPU has \(usable); Launch/setup builds for it (its kernel is faster)"
    }

    /// The CPU's marketing name (/proc/cpuinfo's "model name"), when there is one.
    static var cpuName: String? {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
            let colon = line.firstIndex(of: ":")
        else { return nil }
        return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }

    /// What --version prints.
    static var line: String { "seqpar \(version), commit \(commit), built for \(builtFor)" }
}
