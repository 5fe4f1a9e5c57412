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
    /// - Throws: `CollectiveFailure` (holding an `OutputPathError`) on every rank when rank 0 cannot
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
            let svg = TimelineSVG.render(events: perRank, origin: origin, title: title, label: { "rank \($0)" })
            // The trace and its timeline, both or neither (a full disk leaves no empty file).
            try WholeFiles.write([(Array(trace.utf8), path, "the trace"), (Array(svg.utf8), svgPath(path), "the SVG timeline")])
            if dropped > 0 {
                FileHandle.standardError.write(Data("seqpar: warning: \(dropped) profile events did not fit the log and were dropped\n".utf8))
            }
        }
        return summary
    }

    /// The SVG beside the trace: the same name with .svg in place of its extension.
    public static func svgPath(_ trace: String) -> String {
        let url = URL(fileURLWithPath: trace)
        return url.pathExtension.isEmpty ? trace + ".svg" : url.deletingPathExtension().appendingPathExtension("svg").path
    }
}
