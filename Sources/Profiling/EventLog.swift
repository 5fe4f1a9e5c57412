// Per-rank event recording. An `EventLog` is a buffer allocated once, before the run; recording an
// event writes one fixed-size struct into it (no allocation, no locking: only the thread that
// calls MPI records). When profiling is off there is no log at all, and the hooks in the
// communicator and the strategies cost one nil check. Events past the capacity are counted, not
// stored, so a long run degrades to a truncated timeline instead of a crash.
// This module knows nothing of MPI, so everything computed from events is testable in one process.

import Buffers

#if canImport(Glibc)
    import Glibc
#endif

/// What an interval of a rank's time was spent on.
public enum EventKind: UInt8, CaseIterable, Sendable, BitwiseCopyable {
    /// A kernel call on one (query, key) block.
    case compute
    /// Local work that merges or reshuffles results between communication steps (star's record
    /// packing, the head exchange's packing and unpacking).
    case merge
    /// A non-blocking send, from posting to completion (MPI_Test or MPI_Wait saw it done).
    case send
    /// A non-blocking receive, from posting to completion.
    case receive
    /// Time blocked in MPI_Wait: communication that was not hidden behind compute.
    case wait
    /// Blocking collectives, exposed for their whole span.
    case alltoall
    case broadcast
    case reduce

    /// The name a trace shows.
    public var name: String {
        switch self {
        case .compute: return "compute"
        case .merge: return "merge"
        case .send: return "send"
        case .receive: return "recv"
        case .wait: return "wait"
        case .alltoall: return "alltoall"
        case .broadcast: return "bcast"
        case .reduce: return "reduce"
        }
    }

    /// Data in flight for this rank during the interval.
    public var isCommunication: Bool { self != .compute && self != .merge }
    /// The rank could do nothing else during the interval.
    public var isExposed: Bool { self == .wait || isCollective }
    public var isCollective: Bool { self == .alltoall || self == .broadcast || self == .reduce }
    public var isWork: Bool { self == .compute || self == .merge }
}

/// One interval on one rank. Times are seconds on this rank's `ProfileClock`.
public struct ProfileEvent: Equatable, Sendable, BitwiseCopyable {
    public var kind: EventKind
    /// The other rank (world numbering) of a point-to-point transfer; -1 otherwise.
    public var peer: Int32
    public var start: Double
    public var end: Double
    /// Data bytes this rank sent and received in the event (what TrafficCounter counts).
    public var bytesSent: Double
    public var bytesReceived: Double

    public init(kind: EventKind, start: Double, end: Double, peer: Int = -1, bytesSent: Double = 0, bytesReceived: Double = 0) {
        self.kind = kind
        self.peer = Int32(peer)
        self.start = start
        self.end = end
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
    }

    public var duration: Double { end - start }

    /// Doubles per event in `packed`, the form events travel in to rank 0.
    public static let packedWidth = 6
    public var packed: [Double] { [Double(kind.rawValue), Double(peer), start, end, bytesSent, bytesReceived] }

    public init?(packed p: ArraySlice<Double>) {
        guard p.count == Self.packedWidth, let kind = EventKind(rawValue: UInt8(p[p.startIndex])) else { return nil }
        let i = p.startIndex
        self.init(kind: kind, start: p[i + 2], end: p[i + 3], peer: Int(p[i + 1]), bytesSent: p[i + 4], bytesReceived: p[i + 5])
    }

    /// The same event on another clock: `offset` is this rank's clock minus the reference's.
    public func shifted(by offset: Double) -> ProfileEvent {
        var e = self
        e.start -= offset
        e.end -= offset
        return e
    }
}

/// The clock every event is stamped with: CLOCK_MONOTONIC, in seconds.
public enum ProfileClock {
    @inline(__always)
    public static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
    }
}

/// A rank's events, in a buffer allocated once.
public final class EventLog {
    private let storage: OwnedBuffer<ProfileEvent>
    public private(set) var count = 0
    /// Events that did not fit.
    public private(set) var dropped = 0

    public init(capacity: Int = 1 << 16) {
        storage = OwnedBuffer(uninitializedCount: max(1, capacity))
    }

    public var capacity: Int { storage.count }

    @inline(__always)
    public func record(_ event: ProfileEvent) {
        guard count < storage.count else { dropped &+= 1; return }
        (storage.baseAddress + count).initialize(to: event)
        count &+= 1
    }

    @inline(__always)
    public func record(_ kind: EventKind, start: Double, end: Double, peer: Int = -1, bytesSent: Int = 0, bytesReceived: Int = 0) {
        record(ProfileEvent(kind: kind, start: start, end: end, peer: peer, bytesSent: Double(bytesSent), bytesReceived: Double(bytesReceived)))
    }

    /// Runs `body` and records its span as one `kind` event.
    @inline(__always)
    public func span<R>(_ kind: EventKind, _ body: () throws -> R) rethrows -> R {
        let start = ProfileClock.now()
        defer { record(kind, start: start, end: ProfileClock.now()) }
        return try body()
    }

    public var events: [ProfileEvent] { Array(storage.buffer[0 ..< count]) }

    public func removeAll() {
        count = 0
        dropped = 0
    }
}

/// Runs `body`, recording its span on `log` when there is one: the single hook strategies use
/// around kernel calls and merges.
@inline(__always)
public func recording<R>(_ kind: EventKind, on log: EventLog?, _ body: () throws -> R) rethrows -> R {
    guard let log else { return try body() }
    return try log.span(kind, body)
}
