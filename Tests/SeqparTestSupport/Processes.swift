// What the test targets that start processes share: the package root, the seqpar binary under
// test, one way to run a command to its end or its time limit (killing what it started), and
// scratch folders. No test framework here: each target judges the results itself.

import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The package root, from this file's path (Tests/SeqparTestSupport/Processes.swift).
public let packageRoot: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

public struct MissingBinary: Error, CustomStringConvertible {
    public let path: String
    public var description: String {
        "the seqpar binary \(path) does not exist: build it with the tests (swift test builds it beside them), run Launch/setup, or set SEQPAR_BIN"
    }
}

/// The binary under test: $SEQPAR_BIN when set, else the seqpar built beside the running tests
/// (`swift test` builds it in the same configuration, so a debug run tests the debug binary and
/// never a release binary left from an earlier build).
public func seqparBinary() throws -> String {
    if let path = ProcessInfo.processInfo.environment["SEQPAR_BIN"], !path.isEmpty {
        guard FileManager.default.isExecutableFile(atPath: path) else { throw MissingBinary(path: path) }
        return path
    }
    let runner = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    let path = runner.deletingLastPathComponent().appendingPathComponent("seqpar").path
    guard FileManager.default.isExecutableFile(atPath: path) else { throw MissingBinary(path: path) }
    return path
}

/// What a finished (or stopped) command left behind.
public struct ProcessResult: Sendable {
    public let command: String
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public let seconds: Double
    /// Stopped for running past its limit.
    public let timedOut: Bool

    public var transcript: String {
        "$ \(command)\nexit status \(status) after \(String(format: "%.1f", seconds)) s\(timedOut ? " (killed: time limit)" : "")\n"
            + "--- stdout ---\n\(stdout.suffix(4000))\n--- stderr ---\n\(stderr.suffix(4000))"
    }
}

/// Runs a command to its end or to `timeout` seconds, when it gets SIGTERM, then (with every
/// process below it) SIGKILL. Output goes to files, so no amount of it can fill a pipe. Blocks
/// the calling thread; `runProcess` is the same for async tests.
/// - Parameter environment: the child's whole environment (nil: this process's).
public func runToEnd(
    _ executable: URL, _ arguments: [String], environment: [String: String]? = nil, directory: URL = packageRoot,
    timeout: Double
) throws -> ProcessResult {
    let scratch = try ScratchDirectory(prefix: "seqpar-run")
    let outURL = URL(fileURLWithPath: scratch.path("stdout")), errURL = URL(fileURLWithPath: scratch.path("stderr"))
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
    if let environment { process.environment = environment }
    process.currentDirectoryURL = directory
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = outHandle
    process.standardError = errHandle
    let exited = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in exited.signal() }

    let command = ([executable.path.replacingOccurrences(of: packageRoot.path + "/", with: "")] + arguments).joined(separator: " ")
    let start = Date()
    try startWithSignalsUnblocked(process)
    let group = process.processIdentifier
    let finished = exited.wait(timeout: .now() + timeout) == .success
    if !finished {
        // mpirun forwards SIGTERM to the ranks and cleans up. Ranks and daemons may live in
        // process groups of their own, so if it does not end they are found by parentage.
        kill(-group, SIGTERM)
        if exited.wait(timeout: .now() + 10) != .success {
            let children = descendants(of: group)
            kill(-group, SIGKILL)
            for child in children { kill(child, SIGKILL) }
            _ = exited.wait(timeout: .now() + 10)
        }
    }
    let seconds = Date().timeIntervalSince(start)
    return ProcessResult(
        command: command, status: process.isRunning ? -1 : process.terminationStatus,
        stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "", seconds: seconds, timedOut: !finished)
}

/// `runToEnd` on a thread of its own, not on the test's cooperative thread.
public func runProcess(
    _ executable: URL, _ arguments: [String], environment: [String: String]? = nil, directory: URL = packageRoot,
    timeout: Double
) async throws -> ProcessResult {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(with: Result { try runToEnd(executable, arguments, environment: environment, directory: directory, timeout: timeout) })
        }.start()
    }
}

/// Starts `process` with no signals blocked. The child inherits the signal mask of the thread
/// that spawns it, and test runners' threads block nearly every signal: mpirun started from one
/// of them ignores SIGTERM, and a hung job could then only be SIGKILLed, which orphans its ranks.
private func startWithSignalsUnblocked(_ process: Process) throws {
    var none = sigset_t(), saved = sigset_t()
    sigemptyset(&none)
    pthread_sigmask(SIG_SETMASK, &none, &saved)
    defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
    try process.run()
}

/// Every process below `root`, found through the parent pids in /proc.
private func descendants(of root: Int32) -> [Int32] {
    var parents: [Int32: Int32] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { continue }
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

/// A temporary directory, removed when the value goes away.
public final class ScratchDirectory: @unchecked Sendable {
    public let url: URL

    public init(prefix: String = "seqpar-test") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    public func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Starts this test binary again as a child that runs only the tests `filter` names, with
/// `marker`=1 in its environment so they know they are the child: alone for one rank (MPI's
/// singleton start), under Launch/local (mpirun) for more. The test run itself never starts MPI,
/// so the mpiruns of other tests do not inherit a singleton's variables.
public func runTestsAsChild(
    filter: String, marker: String, ranks: Int, environment extra: [String: String] = [:], timeout: Double
) async throws
    -> ProcessResult
{
    let testBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    let arguments = ["--testing-library", "swift-testing", "--filter", filter]
    var environment = ProcessInfo.processInfo.environment
    environment[marker] = "1"
    for (name, value) in extra { environment[name] = value }
    if ranks == 1 { return try await runProcess(testBinary, arguments, environment: environment, timeout: timeout) }
    environment["SEQPAR_BIN"] = testBinary.path
    return try await runProcess(packageRoot.appendingPathComponent("Launch/local"), [String(ranks)] + arguments, environment: environment, timeout: timeout)
}
