// `seqpar profile` and `run --profile FILE`: the run with an event log on every rank. Rank 0
// gathers the events, moves them onto its clock with the offsets measured at the start, writes a
// Chrome trace (FILE) and an SVG timeline beside it (FILE with .svg); the caller prints the
// per-rank table (`ProfileSummary.table()`).

import AttentionCore
import Foundation
import Profiling
import SequenceParallel

/// What one rank recorded during a profiled run.
public struct RecordedProfile {
    /// Its events, on its own clock.
    public var events: [ProfileEvent]
    /// Events that did not fit the log.
    public let dropped: Int
    /// Rank r's clock minus rank 0's (rank 0 holds them all).
    public let clockOffsets: [Double]
}

/// A profiled run's trace, timeline and summary.
public enum ProfileReport {
    /// Gathers every rank's events onto rank 0 (only there), writes the trace and the SVG there,
    /// and returns the summary: the whole one on rank 0, which prints it; an empty one elsewhere.
    /// Called by every rank alike with a run made with `profile: true`. Warns on stderr (rank 0)
    /// when events were dropped.
    /// - Throws: `CollectiveFailure` (holding a `WriteFailure`) on every rank when rank 0 cannot
    ///   write a file.
    public static func write(_ run: DistributedRun, strategy: StrategyName, to path: String, communicator: Communicator) throws -> ProfileSummary {
        let recorded = run.profile!
        let empty = [[Double]](repeating: [], count: communicator.size)
        let packed = try communicator.gatherv(recorded.events.flatMap(\.packed) + [Double(recorded.dropped)], root: 0) ?? empty
        let offsets = try communicator.gatherv(recorded.clockOffsets, root: 0)?.first ?? []
        let hosts = try communicator.allgather(MPIRuntime.processorName())
        var perRank: [[ProfileEvent]] = []
        var dropped = 0
        for (rank, values) in packed.enumerated() {
            dropped += Int(values.last ?? 0)
            let width = ProfileEvent.packedWidth
            let offset = rank < offsets.count ? offsets[rank] : 0
            perRank.append(
                stride(from: 0, to: max(0, values.count - 1), by: width).compactMap {
                    ProfileEvent(packed: values[$0 ..< $0 + width])?.shifted(by: offset)
                })
        }
        let summary = ProfileSummary(events: perRank)
        // Rank 0 writes; every rank learns whether it could, so a bad path fails them all at once.
        try communicator.together {
            guard communicator.rank == 0 else { return }
            let origin = perRank.joined().map(\.start).min() ?? 0
            let label = { (r: Int) in "rank \(r) (\(hosts[r]))" }
            let title = "seqpar \(strategy.rawValue), \(communicator.size) ranks, \(Format.problem(run)); \(String(format: "%.1f", run.seconds * 1e3)) ms"
            let trace = ChromeTrace.json(
                events: perRank, origin: origin, label: label,
                metadata: [
                    "command": "seqpar profile", "strategy": strategy.rawValue, "problem": Format.problem(run),
                    "clock_offsets_us": offsets.map { String(format: "%.1f", $0 * 1e6) }.joined(separator: " "),
                ])
            try writeFile(trace, to: path, what: "the trace")
            let svg = TimelineSVG.render(events: perRank, origin: origin, title: title, label: { "rank \($0)" })
            try writeFile(svg, to: svgPath(path), what: "the SVG timeline")
            if dropped > 0 {
                FileHandle.standardError.write(Data("seqpar: warning: \(dropped) profile events did not fit the log and were dropped\n".utf8))
            }
        }
        return summary
    }

    /// A file that could not be written, and why.
    public struct WriteFailure: Error, CustomStringConvertible { public let description: String }

    /// Writes `text` to `path`, or says which file could not be written and why.
    /// - Throws: `WriteFailure`.
    public static func writeFile(_ text: String, to path: String, what: String) throws {
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        } catch {
            let reason = ((error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError)?.localizedDescription ?? error.localizedDescription
            throw WriteFailure(description: "cannot write \(what) to \(path): \(reason)")
        }
    }

    /// The SVG beside the trace: the same name with .svg in place of its extension.
    public static func svgPath(_ trace: String) -> String {
        let url = URL(fileURLWithPath: trace)
        return url.pathExtension.isEmpty ? trace + ".svg" : url.deletingPathExtension().appendingPathExtension("svg").path
    }
}
