// What the events of a run say, rank by rank: time computing, communication in flight (the union
// of every interval during which a transfer or collective of the rank was outstanding), the part
// of it the rank spent blocked (exposed), bytes moved, and how well communication was hidden.
// Plain arithmetic on event lists, so it is tested on hand-made ones.

/// Total length of the union of intervals.
public func unionLength(_ intervals: [(start: Double, end: Double)]) -> Double {
    let sorted = intervals.filter { $0.end > $0.start }.sorted { $0.start < $1.start }
    var total = 0.0
    var current: (start: Double, end: Double)?
    for interval in sorted {
        if let c = current, interval.start <= c.end {
            current = (c.start, max(c.end, interval.end))
        } else {
            if let c = current { total += c.end - c.start }
            current = interval
        }
    }
    if let c = current { total += c.end - c.start }
    return total
}

/// One rank's figures.
public struct RankProfile: Equatable, Sendable {
    public var compute = 0.0
    public var merge = 0.0
    /// Seconds blocked on communication (waits and blocking collectives, as a union).
    public var exposed = 0.0
    /// Seconds with any transfer of this rank in flight, from post to completion (a union).
    public var communication = 0.0
    public var bytesSent = 0.0
    public var bytesReceived = 0.0
    public var events = 0

    public init(_ events: [ProfileEvent]) {
        self.events = events.count
        for e in events {
            if e.kind == .compute { compute += e.duration }
            if e.kind == .merge { merge += e.duration }
            bytesSent += e.bytesSent
            bytesReceived += e.bytesReceived
        }
        exposed = unionLength(events.filter { $0.kind.isExposed }.map { ($0.start, $0.end) })
        communication = unionLength(events.filter { $0.kind.isCommunication }.map { ($0.start, $0.end) })
    }

    /// Bytes sent and received per second of communication.
    public var bandwidth: Double { communication > 0 ? (bytesSent + bytesReceived) / communication : 0 }
    /// The fraction of communication time hidden behind compute: 1 - exposed / total (1 when none).
    public var overlap: Double { communication > 0 ? 1 - min(exposed, communication) / communication : 1 }
}

/// Every rank's figures and the run's balance.
public struct ProfileSummary: Sendable {
    public let ranks: [RankProfile]
    /// Seconds from the first event to the last, over all ranks.
    public let span: Double

    public init(events perRank: [[ProfileEvent]]) {
        ranks = perRank.map(RankProfile.init)
        let all = perRank.joined()
        span = (all.map(\.end).max() ?? 0) - (all.map(\.start).min() ?? 0)
    }

    /// max / mean of compute seconds over ranks (1 is perfectly balanced).
    public var imbalance: Double { Self.imbalance(ranks.map(\.compute)) }

    public static func imbalance(_ values: [Double]) -> Double {
        let mean = values.reduce(0, +) / Double(max(1, values.count))
        return mean > 0 ? values.max()! / mean : 1
    }

    /// The per-rank table `seqpar profile` prints.
    public func table() -> String {
        var lines = ["rank  compute s  exposed comm s  total comm s    sent MiB    recv MiB   bandwidth MB/s  overlap  events"]
        for (r, p) in ranks.enumerated() {
            lines.append(
                pad("\(r)", 4) + pad(fixed(p.compute, 4), 11) + pad(fixed(p.exposed, 4), 16) + pad(fixed(p.communication, 4), 14)
                    + pad(fixed(p.bytesSent / 1_048_576, 2), 12) + pad(fixed(p.bytesReceived / 1_048_576, 2), 12)
                    + pad(fixed(p.bandwidth / 1e6, 1), 17) + pad(fixed(p.overlap, 3), 9) + pad("\(p.events)", 8))
        }
        lines.append("load imbalance (max/mean compute): \(fixed(imbalance, 3)); timeline span \(fixed(span * 1e3, 1)) ms")
        return lines.joined(separator: "\n")
    }
}

/// The clock offset of a remote rank from ping exchanges: each sample is (local send time, the
/// remote clock's reading on receipt, local receive time of the reply). The sample with the
/// smallest round trip bounds the error best; the remote reading is taken to fall at its middle.
/// Returns remote clock minus local clock.
public func clockOffset(samples: [(sent: Double, remote: Double, received: Double)]) -> Double {
    guard let best = samples.min(by: { $0.received - $0.sent < $1.received - $1.sent }) else { return 0 }
    return best.remote - (best.sent + best.received) / 2
}

func fixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "\(x)" }
    var scale = 1.0
    for _ in 0 ..< digits { scale *= 10 }
    let rounded = (abs(x) * scale).rounded()
    let whole = Int(rounded / scale), fraction = Int(rounded.truncatingRemainder(dividingBy: scale))
    var text = "\(whole)"
    if digits > 0 {
        let f = String(fraction)
        text += "." + String(repeating: "0", count: digits - f.count) + f
    }
    return (x < 0 && rounded > 0 ? "-" : "") + text
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? " " + text : String(repeating: " ", count: width - text.count) + text
}
