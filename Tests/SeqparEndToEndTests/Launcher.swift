// Starting the built seqpar under real mpirun, as a user does: `Launch/local N arguments...`.
// stdout and stderr go to temporary files (so no amount of output can fill a pipe and deadlock
// the job), and a job that runs past its time limit is stopped (SIGTERM to mpirun, then SIGKILL
// to it and every process below it) and recorded as a failure: a hang never passes silently.

import AttentionJobs
import Foundation
import SeqparTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// What one job left behind.
typealias LaunchResult = ProcessResult

extension ProcessResult: CustomStringConvertible {
    /// Rank 0's JSON object: the one line of stdout that is a JSON object.
    func json(sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(try jsonLine(sourceLocation: sourceLocation).utf8))
        return try #require(object as? [String: Any], "stdout of `\(command)` is not a JSON object", sourceLocation: sourceLocation)
    }

    /// Rank 0's JSON object decoded as one of AttentionJobs' report types (`RunReport`, `VerifyJSON`, ...).
    func report<Report: Decodable>(_ type: Report.Type, sourceLocation: SourceLocation = #_sourceLocation) throws -> Report {
        try JSONReport.decode(type, from: try jsonLine(sourceLocation: sourceLocation))
    }

    /// The one line of stdout that is a JSON object.
    func jsonLine(sourceLocation: SourceLocation) throws -> String {
        let line = stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix("{") }
        return String(try #require(line, "no JSON object on stdout of `\(command)`\n\(self)", sourceLocation: sourceLocation))
    }

    /// stderr without Open MPI's own framed notices ("Primary job terminated normally, but 1
    /// process returned a non-zero exit code..."), which mpirun may print in the middle of a
    /// rank's message: what seqpar itself wrote.
    var seqparStderr: String {
        stderr.replacingOccurrences(of: #"-{40,}\n[\s\S]*?-{40,}\n"#, with: "", options: .regularExpression)
    }

    public var description: String { transcript }
}

/// Runs `Launch/local ranks arguments...` and records an issue when it is killed for running
/// past `timeout` seconds.
/// `environment` sets (or, with nil, removes) variables for this job only.
func launch(
    ranks: Int, arguments: [String], timeout: Double = 120, environment: [String: String?] = [:],
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> LaunchResult {
    let result = try await launch(ranks: ranks, arguments: arguments, timeout: timeout, binary: try seqparBinary(), environment: environment)
    if result.timedOut {
        Issue.record("the job ran past its \(Int(timeout)) s limit and was killed: a hang\n\(result)", sourceLocation: sourceLocation)
    }
    return result
}

/// The same with any binary, and no issue recorded on a time-out (for the test of the time-out).
func launch(ranks: Int, arguments: [String], timeout: Double, binary: String, environment changes: [String: String?] = [:]) async throws -> LaunchResult {
    let script = packageRoot.appendingPathComponent("Launch/local")
    var environment = ProcessInfo.processInfo.environment
    environment["SEQPAR_BIN"] = binary
    for (name, value) in changes { environment[name] = value }
    return try await runProcess(script, [String(ranks)] + arguments, environment: environment, timeout: timeout)
}

// MARK: - JSON

/// A number from JSONSerialization's output (NSNumber on Linux).
func number(_ value: Any?) -> Double? {
    if let n = value as? NSNumber { return n.doubleValue }
    return value as? Double
}

/// `object[path[0]][path[1]]...` as a number.
func number(_ object: [String: Any], _ path: String...) -> Double? {
    var current: Any? = object
    for key in path { current = (current as? [String: Any])?[key] }
    return number(current)
}

func array(_ object: [String: Any], _ key: String) -> [[String: Any]]? { object[key] as? [[String: Any]] }

/// Figures per rank: `object[key]` as numbers.
func perRank(_ json: [String: Any], _ key: String) -> [Double] {
    (json[key] as? [Any] ?? []).compactMap(number)
}

/// Non-overlapping occurrences of `needle` in `haystack`.
func occurrences(of needle: String, in haystack: String) -> Int {
    haystack.components(separatedBy: needle).count - 1
}
