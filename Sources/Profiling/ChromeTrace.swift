// The Chrome trace event format (what Perfetto and chrome://tracing open): one process per rank,
// named by "process_name" metadata, with a thread (lane) each for compute, sends, receives,
// waits and collectives, so overlapping intervals of different kinds never have to nest.
// Events are "X" (complete) events in microseconds from the start of the run, to the nanosecond.
// The file is Codable values written by JSONEncoder (keys sorted); tests decode the same types.

import Foundation

/// A whole trace file: `{"displayTimeUnit": "ms", "otherData": {...}, "traceEvents": [...]}`.
public struct ChromeTraceFile: Codable, Equatable, Sendable {
    public var displayTimeUnit: String
    /// Free-form metadata the viewers show (command, strategy, problem, clock offsets).
    public var otherData: [String: String]
    public var traceEvents: [ChromeTraceEvent]

    public init(displayTimeUnit: String = "ms", otherData: [String: String] = [:], traceEvents: [ChromeTraceEvent]) {
        self.displayTimeUnit = displayTimeUnit
        self.otherData = otherData
        self.traceEvents = traceEvents
    }
}

/// One event: metadata ("M": process and lane names, sort order) or complete ("X": an interval).
public struct ChromeTraceEvent: Codable, Equatable, Sendable {
    /// The event kind's name ("compute", "send", "recv", ...) or the metadata's ("process_name", ...).
    public var name: String
    /// "compute" or "communication"; complete events only.
    public var cat: String?
    /// The phase: "X" complete, "M" metadata.
    public var ph: String
    /// The rank.
    public var pid: Int
    /// The lane (`ChromeTrace.lane`).
    public var tid: Int
    /// Start, microseconds from the trace's origin; complete events only.
    public var ts: Double?
    /// Duration in microseconds; complete events only.
    public var dur: Double?
    public var args: Arguments

    public struct Arguments: Codable, Equatable, Sendable {
        /// A process or lane name (metadata).
        public var name: String?
        /// A process's place in the display (metadata).
        public var sortIndex: Int?
        /// The other rank of a point-to-point transfer.
        public var peer: Int?
        public var bytesSent: Int?
        public var bytesReceived: Int?

        enum CodingKeys: String, CodingKey {
            case name, peer
            case sortIndex = "sort_index"
            case bytesSent = "bytes_sent"
            case bytesReceived = "bytes_received"
        }

        public init(name: String? = nil, sortIndex: Int? = nil, peer: Int? = nil, bytesSent: Int? = nil, bytesReceived: Int? = nil) {
            self.name = name
            self.sortIndex = sortIndex
            self.peer = peer
            self.bytesSent = bytesSent
            self.bytesReceived = bytesReceived
        }
    }
}

public enum ChromeTrace {
    /// Lanes of a rank, in display order.
    static func lane(_ kind: EventKind) -> (id: Int, name: String) {
        switch kind {
        case .compute, .merge: return (0, "compute")
        case .send: return (1, "send")
        case .receive: return (2, "receive")
        case .wait: return (3, "wait")
        case .alltoall, .broadcast, .reduce: return (4, "collective")
        }
    }

    /// The trace of `events` as values: per rank its name and sort order, its lanes' names, then
    /// its events in the order recorded.
    /// - Parameters:
    ///   - events: per rank, on a common clock.
    ///   - origin: the time that becomes 0.
    ///   - label: the name each process gets, e.g. "rank 2 (host)".
    public static func file(
        events: [[ProfileEvent]], origin: Double, label: (Int) -> String = { "rank \($0)" },
        metadata: [String: String] = [:]
    ) -> ChromeTraceFile {
        var items: [ChromeTraceEvent] = []
        for (rank, list) in events.enumerated() {
            items.append(ChromeTraceEvent(name: "process_name", ph: "M", pid: rank, tid: 0, args: .init(name: label(rank))))
            items.append(ChromeTraceEvent(name: "process_sort_index", ph: "M", pid: rank, tid: 0, args: .init(sortIndex: rank)))
            for kind in [EventKind.compute, .send, .receive, .wait, .alltoall] {
                let lane = lane(kind)
                items.append(ChromeTraceEvent(name: "thread_name", ph: "M", pid: rank, tid: lane.id, args: .init(name: lane.name)))
            }
            for e in list {
                items.append(
                    ChromeTraceEvent(
                        name: e.kind.name, cat: e.kind.isCommunication ? "communication" : "compute", ph: "X", pid: rank,
                        tid: lane(e.kind).id, ts: microseconds(e.start - origin), dur: microseconds(max(0, e.duration)),
                        args: .init(
                            peer: e.peer >= 0 ? Int(e.peer) : nil, bytesSent: e.bytesSent > 0 ? Int(e.bytesSent) : nil,
                            bytesReceived: e.bytesReceived > 0 ? Int(e.bytesReceived) : nil)))
            }
        }
        return ChromeTraceFile(otherData: metadata, traceEvents: items)
    }

    /// The trace as JSON text (one line and a newline), keys sorted.
    public static func json(
        events: [[ProfileEvent]], origin: Double, label: (Int) -> String = { "rank \($0)" },
        metadata: [String: String] = [:]
    ) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // As the --json reports write them; the clocks give finite times, so this is a safeguard.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // Strings, integers and (now always encodable) doubles: encoding cannot fail.
        let data = try! encoder.encode(file(events: events, origin: origin, label: label, metadata: metadata))
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Seconds to microseconds, rounded to the nanosecond (so never printed with an exponent),
    /// -0 made 0.
    static func microseconds(_ seconds: Double) -> Double {
        (seconds * 1e9).rounded() / 1e3 + 0
    }
}
