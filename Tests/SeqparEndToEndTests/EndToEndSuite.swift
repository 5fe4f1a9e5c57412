// End-to-end tests: the built seqpar binary under real mpirun at 1 to 4 ranks, judged by its exit
// status, its JSON and text output and the .npy files it writes. Every suite is nested in this
// one, which is serialized: mpirun jobs must not compete with each other for the machine's cores
// (timings and memory figures are asserted on, and 4 ranks already oversubscribe 2 cores).
//
// The binary is the one Launch/setup builds (.build/release/seqpar) or $SEQPAR_BIN; Launch/test
// builds it and runs this suite. A missing binary fails every test with that advice.

import Foundation
import Testing

@Suite("seqpar under mpirun", .serialized)
struct EndToEnd {
    /// The time-out machinery itself: a job that never ends is killed, with the ranks it
    /// started, soon after its limit. Without this, a hang could pass as a slow success.
    @Test("a job past its time limit is killed with all its ranks")
    func hangIsKilled() async throws {
        // /bin/sleep as the "binary": every rank sleeps far longer than the limit. The odd
        // duration marks these processes so the test can look for survivors.
        let marker = "97.531"
        let result = try await launch(ranks: 2, arguments: [marker], timeout: 3, binary: "/bin/sleep")
        #expect(result.timedOut, "the sleeping job was not reported as timed out\n\(result)")
        try await Task.sleep(for: .seconds(1))
        #expect(survivors(withArgument: marker).isEmpty, "ranks survived the kill: \(survivors(withArgument: marker))")
    }
}

/// Processes whose command line holds `argument`.
private func survivors(withArgument argument: String) -> [String] {
    let proc = "/proc"
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: proc) else { return [] }
    return entries.filter { Int($0) != nil }.compactMap { pid in
        guard let data = FileManager.default.contents(atPath: "\(proc)/\(pid)/cmdline") else { return nil }
        let words = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return words.contains(argument) ? "\(pid): \(words.joined(separator: " "))" : nil
    }
}
