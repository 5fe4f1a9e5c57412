// The Chrome trace event format (what Perfetto and chrome://tracing open): one process per rank,
// named by "process_name" metadata, with a thread (lane) each for compute, sends, receives,
// waits and collectives, so overlapping intervals of different kinds never have to nest.
// Events are "X" (complete) events in microseconds from the start of the run.

public enum ChromeTrace {
    /// Lanes of a rank, in display order.
    static func lane(_ kind: EventKind) -> (id: Int, name: String) {
        switch kind {
        case .compute, .merge: return (0, "compute")
        case .send: return (1, "send")
        case .receive: return (2, "receive")
        case .wait: return (3, "wait")
        case .alltoall, .broadcast, .reduce, .sendrecv: return (4, "collective")
        }
    }

    /// - Parameters:
    ///   - events: per rank, on a common clock.
    ///   - origin: the time that becomes 0.
    ///   - label: the name each process gets, e.g. "rank 2 (host)".
    public static func json(
        events: [[ProfileEvent]], origin: Double, label: (Int) -> String = { "rank \($0)" },
        metadata: [String: String] = [:]
    ) -> String {
        var items: [String] = []
        for (rank, list) in events.enumerated() {
            items.append(#"{"name":"process_name","ph":"M","pid":\#(rank),"tid":0,"args":{"name":\#(quoted(label(rank)))}}"#)
            items.append(#"{"name":"process_sort_index","ph":"M","pid":\#(rank),"tid":0,"args":{"sort_index":\#(rank)}}"#)
            for kind in [EventKind.compute, .send, .receive, .wait, .alltoall] {
                let lane = lane(kind)
                items.append(#"{"name":"thread_name","ph":"M","pid":\#(rank),"tid":\#(lane.id),"args":{"name":"\#(lane.name)"}}"#)
            }
            for e in list {
                var args = [String]()
                if e.peer >= 0 { args.append(#""peer":\#(e.peer)"#) }
                if e.bytesSent > 0 { args.append(#""bytes_sent":\#(Int(e.bytesSent))"#) }
                if e.bytesReceived > 0 { args.append(#""bytes_received":\#(Int(e.bytesReceived))"#) }
                let ts = (e.start - origin) * 1e6, dur = max(0, e.duration) * 1e6
                items.append(
                    #"{"name":"\#(e.kind.name)","cat":"\#(e.kind.isCommunication ? "communication" : "compute")","ph":"X","pid":\#(rank),"tid":\#(lane(e.kind).id),"ts":\#(number(ts)),"dur":\#(number(dur)),"args":{\#(args.joined(separator: ","))}}"#
                )
            }
        }
        let meta = metadata.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\(quoted($0.value))" }.joined(separator: ",")
        return "{\"displayTimeUnit\":\"ms\",\"otherData\":{\(meta)},\"traceEvents\":[\n" + items.joined(separator: ",\n") + "\n]}\n"
    }

    /// Microseconds with three decimals (nanoseconds), never exponent notation.
    static func number(_ x: Double) -> String { fixed(x, 3) }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
