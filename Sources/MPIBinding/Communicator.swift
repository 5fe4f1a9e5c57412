// A typed MPI communicator: point-to-point (blocking and not), the collectives the strategies
// need, and split. Buffers are Swift buffer pointers of `MPIScalar` elements; counts are checked
// against MPI's Int32 limit rather than silently truncated.

import Buffers
import CMPI
import Profiling

/// Element types with an MPI datatype.
public protocol MPIScalar: BitwiseCopyable { static var mpiDatatype: MPI_Datatype { get } }
extension Float: MPIScalar { public static var mpiDatatype: MPI_Datatype { seqpar_float() } }
extension Double: MPIScalar { public static var mpiDatatype: MPI_Datatype { seqpar_double() } }
extension Int32: MPIScalar { public static var mpiDatatype: MPI_Datatype { seqpar_int32() } }
extension Int64: MPIScalar { public static var mpiDatatype: MPI_Datatype { seqpar_int64() } }
extension UInt8: MPIScalar { public static var mpiDatatype: MPI_Datatype { seqpar_uint8() } }
extension UInt16: MPIScalar { public static var mpiDatatype: MPI_Datatype { seqpar_uint16() } }

public enum ReduceOperation: Sendable {
    case sum, max

    var handle: MPI_Op {
        switch self {
        case .sum: return seqpar_op_sum()
        case .max: return seqpar_op_max()
        }
    }
}

/// An outstanding non-blocking operation. Its buffer must stay alive until it completes.
public struct Request {
    public init() {}
    var handle: MPI_Request? = seqpar_request_null()
    public var isDone: Bool { handle == seqpar_request_null() }
    /// What a profile records on completion: the transfer, its peer (world rank), bytes, and when it was posted.
    var kind = EventKind.send
    var peer = -1
    var bytes = 0
    var posted = 0.0
}

/// Checks that `count` fits MPI's Int32 counts.
@inline(__always)
package func mpiCount(_ count: Int, _ call: String) throws(MPIError) -> Int32 {
    guard count <= Int(Int32.max) else {
        throw MPIError(call: call, code: -1, message: "\(count) elements exceed MPI's 32-bit count limit; use more ranks")
    }
    return Int32(count)
}

/// Bytes of data a rank moved: point-to-point, all-to-all, broadcast and merge reductions (the
/// small control collectives, such as agreeing on failure, are not counted), and the event log
/// while profiling. Shared by a communicator and those split from it, so the figures are per rank
/// and a communicator split once (and kept) records whenever its parent does.
public final class TrafficCounter {
    public internal(set) var bytesSent = 0
    public internal(set) var bytesReceived = 0
    var recorder: EventLog?
    public init() {}
}

public final class Communicator {
    package let handle: MPI_Comm
    public let rank: Int
    public let size: Int
    public let traffic: TrafficCounter
    /// Where communication events go while profiling (nil: not profiling). Communicators split
    /// from this one share it, as they share `traffic`.
    public var recorder: EventLog? {
        get { traffic.recorder }
        set { traffic.recorder = newValue }
    }
    /// World rank of each rank of this communicator: events name peers in world numbering.
    let worldRanks: [Int]
    private let owned: Bool

    init(handle: MPI_Comm, owned: Bool, traffic: TrafficCounter = TrafficCounter()) throws(MPIError) {
        self.handle = handle
        self.owned = owned
        self.traffic = traffic
        var rank: Int32 = 0, size: Int32 = 0
        try check(MPI_Comm_rank(handle, &rank), "MPI_Comm_rank")
        try check(MPI_Comm_size(handle, &size), "MPI_Comm_size")
        self.rank = Int(rank)
        self.size = Int(size)
        worldRanks = try Self.worldRanks(of: handle, size: Int(size))
    }

    private static func worldRanks(of handle: MPI_Comm, size: Int) throws(MPIError) -> [Int] {
        var group: MPI_Group? = nil, world: MPI_Group? = nil
        try check(MPI_Comm_group(handle, &group), "MPI_Comm_group")
        try check(MPI_Comm_group(seqpar_comm_world(), &world), "MPI_Comm_group")
        defer {
            MPI_Group_free(&group)
            MPI_Group_free(&world)
        }
        var ranks = (0 ..< Int32(size)).map { $0 }
        var translated = [Int32](repeating: 0, count: size)
        try check(MPI_Group_translate_ranks(group, Int32(size), &ranks, world, &translated), "MPI_Group_translate_ranks")
        return translated.map(Int.init)
    }

    deinit {
        if owned && MPIRuntime.isStarted {
            var h: MPI_Comm? = handle
            MPI_Comm_free(&h)
        }
    }

    /// All processes of the job.
    public static func world() throws(MPIError) -> Communicator {
        try Communicator(handle: seqpar_comm_world(), owned: false)
    }

    /// A duplicate (`MPI_Comm_dup`) of a communicator handed in by a program that runs MPI itself,
    /// so that seqpar's messages never meet the program's, with errors returned rather than fatal
    /// on the duplicate only. Freed when the last reference goes. Collective over `handle`'s ranks.
    /// - Throws: when MPI is not initialised (or already finalised), or the duplicate fails.
    public static func duplicating(_ handle: MPI_Comm) throws(MPIError) -> Communicator {
        guard MPIRuntime.isStarted else {
            throw MPIError(call: "MPI_Comm_dup", code: -1, message: "MPI is not initialised (or already finalised); call MPI_Init first")
        }
        var duplicate: MPI_Comm? = nil
        try check(MPI_Comm_dup(handle, &duplicate), "MPI_Comm_dup")
        let communicator = try Communicator(handle: duplicate!, owned: true)
        try check(MPI_Comm_set_errhandler(duplicate!, seqpar_errors_return()), "MPI_Comm_set_errhandler")
        return communicator
    }

    /// The rank `offset` steps along the ring (negative: backwards).
    @inlinable public func neighbour(_ offset: Int) -> Int { ((rank + offset) % size + size) % size }

    /// Sub-communicators: ranks with the same `color` end up together, ordered by `key`.
    public func split(color: Int, key: Int) throws(MPIError) -> Communicator {
        var sub: MPI_Comm? = nil
        try check(MPI_Comm_split(handle, Int32(color), Int32(key), &sub), "MPI_Comm_split")
        return try Communicator(handle: sub!, owned: true, traffic: traffic)
    }

    package func countTransfer(sent: Int, received: Int) {
        traffic.bytesSent += sent
        traffic.bytesReceived += received
    }

    /// Marks what this rank blocks in, for the watchdog's message (Watchdog.swift).
    @inline(__always)
    func blocking<R>(_ operation: WaitState.Operation, peer: Int = -1, _ body: () throws(MPIError) -> R) throws(MPIError) -> R {
        WaitState.enter(operation, peer: peer < 0 ? -1 : worldRanks[peer], ranks: size)
        defer { WaitState.leave() }
        return try body()
    }

    public func barrier() throws(MPIError) {
        try blocking(.barrier) { () throws(MPIError) in try check(MPI_Barrier(handle), "MPI_Barrier") }
    }

    // MARK: point to point

    public func isend<T: MPIScalar>(_ buffer: UnsafeBufferPointer<T>, to destination: Int, tag: Int = 0) throws(MPIError) -> Request {
        var request = Request()
        let count = try mpiCount(buffer.count, "MPI_Isend")
        try check(
            MPI_Isend(buffer.baseAddress, count, T.mpiDatatype, Int32(destination), Int32(tag), handle, &request.handle),
            "MPI_Isend to rank \(destination)")
        account(&request, .send, peer: destination, bytes: buffer.count * MemoryLayout<T>.stride)
        return request
    }

    public func irecv<T: MPIScalar>(_ buffer: UnsafeMutableBufferPointer<T>, from source: Int, tag: Int = 0) throws(MPIError) -> Request {
        var request = Request()
        let count = try mpiCount(buffer.count, "MPI_Irecv")
        try check(
            MPI_Irecv(buffer.baseAddress, count, T.mpiDatatype, Int32(source), Int32(tag), handle, &request.handle),
            "MPI_Irecv from rank \(source)")
        account(&request, .receive, peer: source, bytes: buffer.count * MemoryLayout<T>.stride)
        return request
    }

    /// A posted transfer's bookkeeping: its bytes counted (none to itself), and what a profile
    /// records when it completes (kind, world rank of the peer, bytes, when it was posted).
    private func account(_ request: inout Request, _ kind: EventKind, peer: Int, bytes: Int) {
        let moved = peer != rank ? bytes : 0
        if kind == .send { countTransfer(sent: moved, received: 0) } else { countTransfer(sent: 0, received: moved) }
        request.kind = kind
        request.peer = worldRanks[peer]
        if recorder != nil {
            request.bytes = moved
            request.posted = ProfileClock.now()
        }
    }

    public func wait(_ request: inout Request) throws(MPIError) {
        if request.isDone { return }
        WaitState.enter(request.kind == .send ? .sendWait : .receiveWait, peer: request.peer, ranks: size)
        defer { WaitState.leave() }
        guard let recorder else {
            try check(MPI_Wait(&request.handle, seqpar_status_ignore()), "MPI_Wait")
            return
        }
        let start = ProfileClock.now()
        try check(MPI_Wait(&request.handle, seqpar_status_ignore()), "MPI_Wait")
        let end = ProfileClock.now()
        recorder.record(.wait, start: start, end: end, peer: request.peer)
        recordCompletion(request, at: end, on: recorder)
    }

    /// The transfer of a request that has just completed, from its posting to `end`.
    private func recordCompletion(_ request: Request, at end: Double, on recorder: EventLog) {
        recorder.record(
            request.kind, start: request.posted, end: end, peer: request.peer,
            bytesSent: request.kind == .send ? request.bytes : 0, bytesReceived: request.kind == .receive ? request.bytes : 0)
    }

    /// Runs a blocking collective, recorded as one `kind` event carrying the bytes it moved.
    @inline(__always)
    package func collective(_ kind: EventKind, sent: Int, received: Int, _ body: () throws(MPIError) -> Void) throws(MPIError) {
        guard let recorder else { return try body() }
        let start = ProfileClock.now()
        try body()
        recorder.record(kind, start: start, end: ProfileClock.now(), bytesSent: sent, bytesReceived: received)
    }

    /// Lets MPI progress `request`; true once it has completed.
    @discardableResult
    public func test(_ request: inout Request) throws(MPIError) -> Bool {
        if request.isDone { return true }
        var flag: Int32 = 0
        try check(MPI_Test(&request.handle, &flag, seqpar_status_ignore()), "MPI_Test")
        if flag != 0, let recorder { recordCompletion(request, at: ProfileClock.now(), on: recorder) }
        return flag != 0
    }

    // MARK: collectives

    /// Element-wise reduction of `values` over all ranks; every rank gets the result.
    public func allreduce<T: MPIScalar>(_ values: [T], _ operation: ReduceOperation) throws(MPIError) -> [T] {
        var result = values
        let count = try mpiCount(values.count, "MPI_Allreduce")
        WaitState.enter(.allreduce, ranks: size)
        defer { WaitState.leave() }
        let code = values.withUnsafeBufferPointer { send in
            result.withUnsafeMutableBufferPointer { receive in
                MPI_Allreduce(send.baseAddress, receive.baseAddress, count, T.mpiDatatype, operation.handle, handle)
            }
        }
        try check(code, "MPI_Allreduce")
        return result
    }

    public func allreduce<T: MPIScalar>(_ value: T, _ operation: ReduceOperation) throws(MPIError) -> T {
        try allreduce([value], operation)[0]
    }

    /// One value from every rank, indexed by rank.
    public func allgather<T: MPIScalar>(_ value: T) throws(MPIError) -> [T] {
        var result = [T](repeating: value, count: size)
        var mine = value
        WaitState.enter(.allgather, ranks: size)
        defer { WaitState.leave() }
        let code = result.withUnsafeMutableBufferPointer { receive in
            MPI_Allgather(&mine, 1, T.mpiDatatype, receive.baseAddress, 1, T.mpiDatatype, handle)
        }
        try check(code, "MPI_Allgather")
        return result
    }

    /// Variable-length arrays from every rank, indexed by rank.
    public func allgatherv<T: MPIScalar>(_ values: [T]) throws(MPIError) -> [[T]] {
        let counts = try allgather(Int32(try mpiCount(values.count, "MPI_Allgatherv")))
        var displacements = [Int32](repeating: 0, count: size)
        for r in 1 ..< max(1, size) { displacements[r] = displacements[r - 1] + counts[r - 1] }
        let total = Int(counts.reduce(0, +))
        let receive = OwnedBuffer<T>(uninitializedCount: max(1, total))
        WaitState.enter(.allgather, ranks: size)
        defer { WaitState.leave() }
        let code = values.withUnsafeBufferPointer { send in
            receive.withUnsafeMutableBufferPointer { receive in
                MPI_Allgatherv(send.baseAddress, counts[rank], T.mpiDatatype, receive.baseAddress, counts, displacements, T.mpiDatatype, handle)
            }
        }
        try check(code, "MPI_Allgatherv")
        return (0 ..< size).map { Array(receive.buffer[Int(displacements[$0]) ..< Int(displacements[$0] + counts[$0])]) }
    }

    /// Variable-length arrays from every rank onto `root`, indexed by rank; nil on the other ranks
    /// (which then hold nothing of the others').
    public func gatherv<T: MPIScalar>(_ values: [T], root: Int) throws(MPIError) -> [[T]]? {
        let counts = try allgather(Int32(try mpiCount(values.count, "MPI_Gatherv")))
        var displacements = [Int32](repeating: 0, count: size)
        for r in 1 ..< max(1, size) { displacements[r] = displacements[r - 1] + counts[r - 1] }
        let total = rank == root ? Int(counts.reduce(0, +)) : 0
        let receive = OwnedBuffer<T>(uninitializedCount: max(1, total))
        WaitState.enter(.gather, ranks: size)
        defer { WaitState.leave() }
        let code = values.withUnsafeBufferPointer { send in
            receive.withUnsafeMutableBufferPointer { receive in
                MPI_Gatherv(
                    send.baseAddress, counts[rank], T.mpiDatatype, receive.baseAddress, counts, displacements, T.mpiDatatype,
                    Int32(root), handle)
            }
        }
        try check(code, "MPI_Gatherv")
        guard rank == root else { return nil }
        return (0 ..< size).map { Array(receive.buffer[Int(displacements[$0]) ..< Int(displacements[$0] + counts[$0])]) }
    }

    /// Strings from every rank (host names, error messages), indexed by rank.
    public func allgather(_ text: String) throws(MPIError) -> [String] {
        try allgatherv(Array(text.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// `send` holds `count` elements for each rank in rank order; returns theirs for this rank.
    public func alltoall<T: MPIScalar>(_ send: UnsafeBufferPointer<T>, _ receive: UnsafeMutableBufferPointer<T>, countPerRank: Int) throws(MPIError) {
        precondition(send.count >= countPerRank * size && receive.count >= countPerRank * size)
        let count = try mpiCount(countPerRank, "MPI_Alltoall")
        let bytes = countPerRank * (size - 1) * MemoryLayout<T>.stride
        try collective(.alltoall, sent: bytes, received: bytes) { () throws(MPIError) in
            WaitState.enter(.alltoall, ranks: size)
            defer { WaitState.leave() }
            try check(MPI_Alltoall(send.baseAddress, count, T.mpiDatatype, receive.baseAddress, count, T.mpiDatatype, handle), "MPI_Alltoall")
        }
        countTransfer(sent: bytes, received: bytes)
    }

    /// Variable counts per peer: element counts and offsets, in rank order, for both sides.
    public func alltoallv<T: MPIScalar>(
        _ send: UnsafeBufferPointer<T>, sendCounts: [Int], sendOffsets: [Int],
        _ receive: UnsafeMutableBufferPointer<T>, receiveCounts: [Int], receiveOffsets: [Int]
    ) throws(MPIError) {
        precondition([sendCounts, sendOffsets, receiveCounts, receiveOffsets].allSatisfy { $0.count == size })
        func int32s(_ values: [Int]) throws(MPIError) -> [Int32] {
            var out = [Int32]()
            for v in values { out.append(try mpiCount(v, "MPI_Alltoallv")) }
            return out
        }
        let sc = try int32s(sendCounts), so = try int32s(sendOffsets)
        let rc = try int32s(receiveCounts), ro = try int32s(receiveOffsets)
        // What stays on this rank is a copy, not traffic.
        let sent = (sendCounts.reduce(0, +) - sendCounts[rank]) * MemoryLayout<T>.stride
        let received = (receiveCounts.reduce(0, +) - receiveCounts[rank]) * MemoryLayout<T>.stride
        try collective(.alltoall, sent: sent, received: received) { () throws(MPIError) in
            WaitState.enter(.alltoall, ranks: size)
            defer { WaitState.leave() }
            try check(MPI_Alltoallv(send.baseAddress, sc, so, T.mpiDatatype, receive.baseAddress, rc, ro, T.mpiDatatype, handle), "MPI_Alltoallv")
        }
        countTransfer(sent: sent, received: received)
    }

    /// Copies `buffer` from `root` to every rank.
    public func broadcast<T: MPIScalar>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws(MPIError) {
        let count = try mpiCount(buffer.count, "MPI_Bcast")
        let bytes = buffer.count * MemoryLayout<T>.stride
        let (sent, received) = size == 1 ? (0, 0) : rank == root ? (bytes * (size - 1), 0) : (0, bytes)
        try collective(.broadcast, sent: sent, received: received) { () throws(MPIError) in
            WaitState.enter(.broadcast, ranks: size)
            defer { WaitState.leave() }
            try check(MPI_Bcast(buffer.baseAddress, count, T.mpiDatatype, Int32(root), handle), "MPI_Bcast")
        }
        countTransfer(sent: sent, received: received)
    }
}
