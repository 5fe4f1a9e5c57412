// Starting the built seqpar under real mpirun, as a user does: `Launch/local N arguments...`.
// stdout and stderr go to temporary files (so no amount of output can fill a pipe and deadlock
// the job), and a job that runs past its time limit is stopped (SIGTERM to mpirun, then SIGKILL
// to it and every process below it) and recorded as a failure: a hang never passes silently.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The package root, from this file's path (Tests/SeqparEndToEndTests/Launcher.swift).
let packageRoot: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// What one job left behind.
struct LaunchResult: CustomStringConvertible {
    let command: String
    let status: Int32
    let stdout: String
    let stderr: String
    let seconds: Double
    let timedOut: Bool

    /// Rank 0's JSON object: the one line of stdout that is a JSON object.
    func json(sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let line = stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix("{") }
        let text = try #require(line, "no JSON object on stdout of `\(command)`\n\(self)", sourceLocation: sourceLocation)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try #require(object as? [String: Any], "stdout of `\(command)` is not a JSON object", sourceLocation: sourceLocation)
    }

    /// stderr without Open MPI's own framed notices ("Primary job terminated normally, but 1
    /// process returned a non-zero exit code..."), which mpirun may print in the middle of a
    /// rank's message: what seqpar itself wrote.
    var seqparStderr: String {
        stderr.replacingOccurrences(of: #"-{40,}\n[\s\S]*?-{40,}\n"#, with: "", options: .regularExpression)
    }

    var description: String {
        "$ \(command)\nexit status \(status) after \(String(format: "%.1f", seconds)) s\(timedOut ? " (killed: time limit)" : "")\n"
            + "--- stdout ---\n\(stdout.suffix(4000))\n--- stderr ---\n\(stderr.suffix(4000))"
    }
}

struct MissingBinary: Error, CustomStringConvertible {
    let path: String
    var description: String {
        "the seqpar binary \(path) does not exist: run Launch/setup (it builds .build/release/seqpar), or set SEQPAR_BIN"
    }
}

/// The binary under test: SEQPAR_BIN, or the release build that Launch/setup makes.
func seqparBinary() throws -> String {
    let path = ProcessInfo.processInfo.environment["SEQPAR_BIN"].flatMap { $0.isEmpty ? nil : $0 }
        ?? packageRoot.appendingPathComponent(".build/release/seqpar").path
    guard FileManager.default.isExecutableFile(atPath: path) else { throw MissingBinary(path: path) }
    return path
}

/// Runs `Launch/local ranks arguments...` and records an issue when it is killed for running
/// past `timeout` seconds.
/// `environment` sets (or, with nil, removes) variables for this job only.
func launch(ranks: Int, arguments: [String], timeout: Double = 120, environment: [String: String?] = [:],
            sourceLocation: SourceLocation = #_sourceLocation) async throws -> LaunchResult {
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
    return try await runProcess(executable: script, arguments: [String(ranks)] + arguments, environment: environment, timeout: timeout)
}

/// Runs a process to its end or to `timeout`, when it gets SIGTERM, then (with every process
/// below it) SIGKILL. Foundation starts each child in a process group of its own; mpirun's ranks
/// get groups of their own, so they are not reached through the group.
func runProcess(executable: URL, arguments: [String], environment: [String: String], timeout: Double) async throws -> LaunchResult {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-e2e-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: scratch) }
    let outURL = scratch.appendingPathComponent("stdout"), errURL = scratch.appendingPathComponent("stderr")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    let outHandle = try FileHandle(forWritingTo: outURL), errHandle = try FileHandle(forWritingTo: errURL)
    defer {
        try? outHandle.close()
        try? errHandle.close()
    }

    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.environment = environment
    process.currentDirectoryURL = packageRoot
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = outHandle
    process.standardError = errHandle
    let exited = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in exited.signal() }

    let command = ([executable.path.replacingOccurrences(of: packageRoot.path + "/", with: "")] + arguments).joined(separator: " ")
    let start = Date()
    try await startWithSignalsUnblocked(process)
    let group = process.processIdentifier
    let finished = await wait(exited, seconds: timeout)
    if !finished {
        // mpirun forwards SIGTERM to the ranks and cleans up. The ranks live in process groups
        // of their own, so if mpirun does not end, they are found by parentage and killed too.
        kill(-group, SIGTERM)
        if await !wait(exited, seconds: 10) {
            let children = descendants(of: group)
            kill(-group, SIGKILL)
            for child in children { kill(child, SIGKILL) }
            _ = await wait(exited, seconds: 10)
        }
    }
    let seconds = Date().timeIntervalSince(start)
    let stdout = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
    let stderr = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
    return LaunchResult(command: command, status: process.isRunning ? -1 : process.terminationStatus,
                        stdout: stdout, stderr: stderr, seconds: seconds, timedOut: !finished)
}

/// Waits for a semaphore on a thread of its own, not on the test's cooperative thread.
private func wait(_ semaphore: DispatchSemaphore, seconds: Double) async -> Bool {
    await withCheckedContinuation { continuation in
        Thread {
            continuation.resume(returning: semaphore.wait(timeout: .now() + seconds) == .success)
        }.start()
    }
}

/// Starts `process` from a thread with no signals blocked. The child inherits the signal mask
/// of the thread that spawns it, and the test runner's threads (Dispatch and Swift concurrency
/// workers) block nearly every signal: mpirun started from one of them ignores SIGTERM, and a
/// hung job could then only be SIGKILLed, which orphans its ranks.
private func startWithSignalsUnblocked(_ process: Process) async throws {
    let box = UncheckedBox(process)
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
        Thread {
            var none = sigset_t()
            sigemptyset(&none)
            pthread_sigmask(SIG_SETMASK, &none, nil)
            do {
                try box.value.run()
                continuation.resume()
            } catch {
                continuation.resume(throwing: error)
            }
        }.start()
    }
}

private final class UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Every process below `root`, found through the parent pids in /proc.
private func descendants(of root: Int32) -> [Int32] {
    var parents: [Int32: Int32] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { continue }
        // After "pid (comm)": state, then the parent pid.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        if fields.count > 1, let parent = Int32(fields[1]) { parents[pid] = parent }
    }
    var found: [Int32] = [], frontier = [root]
    while let next = frontier.popLast() {
        let children = parents.filter { $0.value == next }.map(\.key)
        found += children
        frontier += children
    }
    return found
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

func dictionary(_ object: [String: Any], _ key: String) -> [String: Any]? { object[key] as? [String: Any] }

func array(_ object: [String: Any], _ key: String) -> [[String: Any]]? { object[key] as? [[String: Any]] }

func boolean(_ value: Any?) -> Bool? {
    if let b = value as? Bool { return b }
    return (value as? NSNumber)?.boolValue
}

/// Non-overlapping occurrences of `needle` in `haystack`.
func occurrences(of needle: String, in haystack: String) -> Int {
    haystack.components(separatedBy: needle).count - 1
}
