// Rank 0's progress through a long computation, on one line of stderr that updates in place:
// the share of rank 0's expected kernel work done, the time so far and an estimate of the time
// left. Fed from the one place every strategy calls the kernel (Instrumentation.swift): after each
// block, and between query tiles through the kernel's `progress` callback; the kernel's hot loop
// is untouched. Off unless a command installs a meter (`ProgressMeter.current`), which it does
// only on rank 0 when stderr is a terminal and --quiet is not given.

import Foundation
import MPIBinding
import Profiling

/// Rank 0's progress line on stderr: the share of its expected kernel FLOPs done, the time so far and the time left.
public final class ProgressMeter {
    /// The meter the kernel calls feed; nil (the default) costs one load per kernel call.
    nonisolated(unsafe) public static var current: ProgressMeter?

    let label: String
    /// Kernel FLOPs this rank expects to spend (an estimate: the kernel also counts the hidden
    /// part of tiles the mask cuts, so the share is capped below 100% until `finish`).
    let expected: Double
    private var done = 0.0
    private let start = ProfileClock.now()
    private var lastShown = -1.0
    private let output: FileHandle

    public init(label: String, expectedFlops: Double, output: FileHandle = .standardError) {
        self.label = label
        expected = max(expectedFlops, 1)
        self.output = output
        draw(fraction: 0, now: start)
    }

    /// Work finished since the last call (a whole kernel call).
    public func add(_ flops: Double) {
        done += flops
        update(inFlight: 0)
    }

    /// Progress inside a kernel call: `flops` of it done so far. At most 4 redraws a second.
    public func update(inFlight flops: Double) {
        let now = ProfileClock.now()
        guard now - lastShown >= 0.25 else { return }
        draw(fraction: min(0.99, (done + flops) / expected), now: now)
    }

    /// Clears the line (the command's own report follows).
    public func finish() {
        output.write(Data("\r\u{1B}[K".utf8))
    }

    private func draw(fraction: Double, now: Double) {
        lastShown = now
        let elapsed = now - start
        var text = "\r\(label): \(Int(fraction * 100))%, \(Self.duration(elapsed))"
        if fraction >= 0.02 && elapsed >= 1 { text += ", about \(Self.duration(elapsed / fraction - elapsed)) left" }
        output.write(Data((text + "\u{1B}[K").utf8))
    }

    static func duration(_ seconds: Double) -> String {
        seconds < 60 ? String(format: "%.0f s", seconds) : String(format: "%d min %02d s", Int(seconds) / 60, Int(seconds) % 60)
    }

    /// Whether this process should show progress: SEQPAR_PROGRESS=1 or 0 (Launch/local sets it from
    /// its own stderr, which mpirun does not pass on as a terminal), else whether stderr is one.
    public static var wanted: Bool {
        switch ProcessInfo.processInfo.environment["SEQPAR_PROGRESS"] {
        case "1": return true
        case "0": return false
        default: return isatty(2) != 0
        }
    }
}
