// The all-to-all shared by the head-sharded strategies (heads, mesh). Inside a group of ranks
// that together hold some tokens, `scatter` turns sequence shards into head shards: member m
// gets every token of the group for its heads (an even, possibly uneven, split of the heads) and
// the kv heads those read, which are sent to every member that needs them (kv heads below the
// group size work). `gather` turns a head-sharded result back into sequence shards.
// Three alltoallv calls each way (Q, K, V; O, LSE), landing straight in place where the layout allows.

import AttentionCore
import Buffers
import FileFormats
import MPIBinding
import Profiling

struct HeadExchange {
    let communicator: Communicator
    let shape: AttentionShape
    /// Each member's rows (global positions), in member order.
    let memberSegments: [[ShardSegment]]

    init(communicator: Communicator, shape: AttentionShape, memberRanges: [[Range<Int>]]) {
        self.communicator = communicator
        self.shape = shape
        memberSegments = memberRanges.map(ShardSegment.stacked)
    }

    /// Heads of `member`: an even split, the first heads % size members taking one more.
    static func heads(of member: Int, members: Int, heads: Int) -> Range<Int> {
        TokenPartition.chunk(member, of: members, tokens: heads)
    }

    func slice(of member: Int) -> HeadSlice {
        HeadSlice(Self.heads(of: member, members: communicator.size, heads: shape.heads), of: shape)
    }

    private func rows(_ member: Int) -> Int { LocalShard.rows(memberSegments[member]) }

    /// Where each part starts when parts of `counts` elements are laid back to back.
    static func offsets(_ counts: [Int]) -> [Int] {
        var at = 0
        return counts.map { count in
            defer { at += count }; return at
        }
    }

    /// The group's rows, member after member: the rows of every head shard.
    var groupSegments: [ShardSegment] { ShardSegment.stacked(memberSegments.flatMap { $0.map(\.positions) }) }
    var groupRows: Int { (0 ..< communicator.size).reduce(0) { $0 + rows($1) } }
    /// First group row of each member.
    private var firstRows: [Int] { Self.offsets((0 ..< communicator.size).map(rows)) }

    /// This member's head shard: Q `[groupRows, slice heads, d]`, K then V `[groupRows, slice kv heads, d]`,
    /// in the sequence shard's element type. It owns its buffers: they are freed with the last copy of the shard.
    struct HeadShard {
        let slice: HeadSlice
        let queryStorage: ElementStorage, keyValueStorage: ElementStorage
        var queries: ElementRows { queryStorage.rows }
        var keyValues: ElementRows { keyValueStorage.rows }

        /// Zeroed buffers of `queries` and `keyValues` elements.
        init(slice: HeadSlice, queries: Int, keyValues: Int, elementType: ElementType) {
            self.slice = slice
            queryStorage = ElementStorage(zeroed: queries, elementType: elementType)
            keyValueStorage = ElementStorage(zeroed: keyValues, elementType: elementType)
        }
    }

    /// Sequence shards to head shards. `shard` holds this member's rows of every head.
    func scatter(_ shard: LocalShard) throws -> HeadShard {
        let (me, d) = (communicator.rank, shape.headDim)
        let mine = slice(of: me), groupRows = self.groupRows
        let myRows = shard.keyRows
        let result = HeadShard(
            slice: mine, queries: groupRows * mine.heads.count * d, keyValues: 2 * groupRows * mine.kvHeads.count * d,
            elementType: shard.elementType)

        // (source tensor, its row width, the head range each member takes, where received rows land)
        let parts: [(ElementRows, Int, (Int) -> Range<Int>, ElementRows)] = [
            (shard.queryElements, shape.queryRowWidth, { slice(of: $0).heads }, result.queries),
            (shard.keyValueStorage.rows, shape.kvRowWidth, { slice(of: $0).kvHeads }, result.keyValues),
            (
                shard.keyValueStorage.rows.advanced(by: myRows * shape.kvRowWidth), shape.kvRowWidth, { slice(of: $0).kvHeads },
                result.keyValues.advanced(by: groupRows * mine.kvHeads.count * d)
            ),
        ]
        for (source, rowWidth, headsOf, destination) in parts {
            try scatterRows(source, rows: myRows, rowWidth: rowWidth, width: d, headsOf: headsOf, into: UnsafeMutableRawPointer(mutating: destination.base))
        }
        return result
    }

    /// Head shards back to sequence shards: `local` holds every group row for this member's
    /// heads; the result holds this member's rows for every head.
    func gather(_ local: PartialResult, into result: inout PartialResult) throws {
        let (members, me, d) = (communicator.size, communicator.rank, shape.headDim)
        let mine = slice(of: me).heads, firstRows = self.firstRows, myRows = result.rows
        precondition(local.rows == groupRows && local.heads == mine.count && result.heads == shape.heads)

        try local.output.withUnsafeBufferPointer { o in
            try result.output.withUnsafeMutableBufferPointer { out in
                try gatherRows(
                    o.baseAddress!, width: d, headsOf: { slice(of: $0).heads }, into: out.baseAddress!,
                    rows: myRows, rowWidth: shape.queryRowWidth)
            }
        }

        // LSE: pack [my heads, rows of m] per member; what arrives from m is [heads of m, myRows],
        // which is exactly its block of the [heads, myRows] result.
        let sendCounts = (0 ..< members).map { mine.count * rows($0) }
        let sendOffsets = Self.offsets(sendCounts)
        let send = OwnedBuffer<Float>(uninitializedCount: max(1, sendCounts.reduce(0, +)))
        recording(.merge, on: communicator.recorder) {
            let send = send.buffer
            for m in 0 ..< members {
                for h in 0 ..< mine.count {
                    for row in 0 ..< rows(m) { send[sendOffsets[m] + h * rows(m) + row] = local.lse[h * local.rows + firstRows[m] + row] }
                }
            }
        }
        try result.lse.withUnsafeMutableBufferPointer { lse in
            try communicator.alltoallv(
                UnsafeBufferPointer(send.buffer), sendCounts: sendCounts, sendOffsets: sendOffsets,
                lse, receiveCounts: (0 ..< members).map { slice(of: $0).heads.count * myRows },
                receiveOffsets: (0 ..< members).map { slice(of: $0).heads.lowerBound * myRows })
        }
    }

    /// Sends each member `m` this member's `rows` rows of `source` (`rowWidth` floats each) for the
    /// heads `headsOf(m)` (`width` floats per head); what arrives, `[groupRows, headsOf(me), width]`,
    /// lands at `destination`, member after member. With a 16-bit `elementType` the rows travel
    /// narrowed to it (exact for values already rounded to it: dO, never the float32 statistics)
    /// and are widened on arrival. (Q, K and V, held in their type, take the `ElementRows` form.)
    func scatterRows(
        _ source: UnsafePointer<Float>, rows myRows: Int, rowWidth: Int, width d: Int, headsOf: (Int) -> Range<Int>,
        into destination: UnsafeMutablePointer<Float>, elementType: ElementType = .f32
    ) throws {
        if elementType == .f32 || communicator.size == 1 {
            try scatterRows(ElementRows(source), rows: myRows, rowWidth: rowWidth, width: d, headsOf: headsOf, into: destination)
            return
        }
        let arriving = groupRows * headsOf(communicator.rank).count * d
        let received = OwnedBuffer<UInt16>(uninitializedCount: max(1, arriving))
        try scatterRows(source, rows: myRows, rowWidth: rowWidth, width: d, headsOf: headsOf, into: received.baseAddress) { to, from, count in
            elementType.narrow(from, into: to, count: count)
        }
        recording(.merge, on: communicator.recorder) { elementType.widen(received.baseAddress, into: destination, count: arriving) }
    }

    /// `scatterRows` of rows held in their element type (Q, K, V of a 16-bit job in 16 bits):
    /// what arrives lands at `destination` in the same type.
    func scatterRows(
        _ source: ElementRows, rows myRows: Int, rowWidth: Int, width d: Int, headsOf: (Int) -> Range<Int>, into destination: UnsafeMutableRawPointer
    ) throws {
        func scatter<Element: MPIScalar>(_: Element.Type) throws {
            try scatterRows(
                source.base.assumingMemoryBound(to: Element.self), rows: myRows, rowWidth: rowWidth, width: d, headsOf: headsOf,
                into: destination.assumingMemoryBound(to: Element.self)
            ) { to, from, count in
                to.update(from: from, count: count)
            }
        }
        if source.elementType == .f32 { try scatter(Float.self) } else { try scatter(UInt16.self) }
    }

    /// `scatterRows` with the rows packed into `Element`s by `pack(to, from, count)`.
    private func scatterRows<Source, Element: MPIScalar>(
        _ source: UnsafePointer<Source>, rows myRows: Int, rowWidth: Int, width d: Int, headsOf: (Int) -> Range<Int>,
        into destination: UnsafeMutablePointer<Element>,
        packing pack: (UnsafeMutablePointer<Element>, UnsafePointer<Source>, Int) -> Void
    ) throws {
        let (members, me) = (communicator.size, communicator.rank)
        let sendCounts = (0 ..< members).map { myRows * headsOf($0).count * d }
        let sendOffsets = Self.offsets(sendCounts)
        let send = OwnedBuffer<Element>(uninitializedCount: max(1, sendCounts.reduce(0, +)))
        recording(.merge, on: communicator.recorder) {
            for m in 0 ..< members {  // pack each member's heads, row by row
                let heads = headsOf(m)
                for row in 0 ..< myRows {
                    pack(send.baseAddress + sendOffsets[m] + row * heads.count * d, source + row * rowWidth + heads.lowerBound * d, heads.count * d)
                }
            }
        }
        let width = headsOf(me).count * d
        try communicator.alltoallv(
            UnsafeBufferPointer(send.buffer), sendCounts: sendCounts, sendOffsets: sendOffsets,
            UnsafeMutableBufferPointer(start: destination, count: groupRows * width),
            receiveCounts: (0 ..< members).map { rows($0) * width },
            receiveOffsets: firstRows.map { $0 * width })
    }

    /// The transpose of `scatterRows`: `local` holds every group row for the heads
    /// `headsOf(me)` (`width` floats per head); each member gets its own rows back, written (or,
    /// with `add`, added: kv heads that several members read) into `out`, `[myRows, rowWidth]`,
    /// at each sender's heads.
    func gatherRows(
        _ local: UnsafePointer<Float>, width d: Int, headsOf: (Int) -> Range<Int>, into out: UnsafeMutablePointer<Float>,
        rows myRows: Int, rowWidth: Int, add: Bool = false
    ) throws {
        let (members, me) = (communicator.size, communicator.rank)
        let mine = headsOf(me), firstRows = self.firstRows
        // The rows of member m are contiguous in `local`; what arrives from m is [myRows, headsOf(m), d].
        let receiveCounts = (0 ..< members).map { myRows * headsOf($0).count * d }
        let receiveOffsets = Self.offsets(receiveCounts)
        let received = OwnedBuffer<Float>(uninitializedCount: max(1, receiveCounts.reduce(0, +)))
        try communicator.alltoallv(
            UnsafeBufferPointer(start: local, count: groupRows * mine.count * d),
            sendCounts: (0 ..< members).map { rows($0) * mine.count * d },
            sendOffsets: firstRows.map { $0 * mine.count * d },
            received.buffer, receiveCounts: receiveCounts, receiveOffsets: receiveOffsets)
        recording(.merge, on: communicator.recorder) {
            for m in 0 ..< members {
                let heads = headsOf(m), count = heads.count * d
                for row in 0 ..< myRows {
                    let target = out + row * rowWidth + heads.lowerBound * d
                    let from = received.baseAddress + receiveOffsets[m] + row * count
                    if add {
                        for x in 0 ..< count { target[x] += from[x] }
                    } else {
                        target.update(from: from, count: count)
                    }
                }
            }
        }
    }
}
