// Packed documents: where each document of a packed sequence starts and ends, as FlashAttention's
// varlen `cu_seqlens` gives them ([0, l1, l1+l2, ..., tokens]). Documents may have any length,
// 0 and 1 included. Finding a position's document is a binary search, so the mask's per-block
// questions stay cheap however many documents there are. Also: lengths given inline, lengths
// drawn from a seed, and a cu_seqlens .npy (int32 or int64) checked entry by entry.

import FileFormats

public struct DocumentBoundaries: Equatable, Sendable, CustomStringConvertible {
    /// cu_seqlens: starts at 0, never decreases, ends at the token count.
    public let offsets: [Int]
    /// For each run of 2^`bucketShift` positions, the document holding its first one: a lookup
    /// searches only between two neighbours, not all of `offsets` (a million documents make a
    /// search of 20 cache misses otherwise, and the layout asks millions of them).
    @usableFromInline let bucketFirst: [Int]
    @usableFromInline static let bucketShift = 6

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String

        public init(description: String) { self.description = description }
    }

    /// Checks `offsets` against a sequence of `tokens` tokens; `source` names them in messages
    /// ("--cu-seqlens docs.npy", "--documents").
    public init(offsets: [Int], tokens: Int, source: String = "cu_seqlens") throws {
        func refuse(_ what: String) -> Invalid { Invalid(description: "\(source): \(what)") }
        guard offsets.count >= 2 else {
            throw refuse("holds \(offsets.count) entr\(offsets.count == 1 ? "y" : "ies"); expected [0, l1, l1+l2, ..., \(tokens)], at least two entries")
        }
        guard offsets[0] == 0 else { throw refuse("starts at \(offsets[0]); cu_seqlens must start at 0") }
        for i in 1 ..< offsets.count where offsets[i] < offsets[i - 1] {
            throw refuse("decreases at index \(i) (\(offsets[i]) after \(offsets[i - 1])); cumulative lengths never decrease")
        }
        guard offsets.last! == tokens else {
            throw refuse("ends at \(offsets.last!) but the sequence has \(tokens) tokens; the last entry must be the token count")
        }
        self.offsets = offsets
        var d = 0
        bucketFirst = stride(from: 0, to: tokens, by: 1 << Self.bucketShift).map { position in
            while d + 2 < offsets.count && offsets[d + 1] <= position { d += 1 }
            return d
        }
    }

    /// Documents of the given lengths, back to back.
    public init(lengths: [Int], tokens: Int, source: String = "--documents") throws {
        if let bad = lengths.firstIndex(where: { $0 < 0 }) {
            throw Invalid(description: "\(source): document \(bad) has length \(lengths[bad]); lengths are 0 or more")
        }
        let total = lengths.reduce(0, +)
        guard total == tokens else {
            throw Invalid(description: "\(source): the lengths sum to \(total) but the sequence has \(tokens) tokens; they must sum to the token count")
        }
        try self.init(offsets: lengths.reduce(into: [0]) { $0.append($0.last! + $1) }, tokens: tokens, source: source)
    }

    /// `count` documents of lengths drawn from `seed`, summing to `tokens`: about one in six is
    /// tiny (0 to 3 tokens), the others share the rest in proportions that differ up to 50-fold.
    public static func random(count: Int, tokens: Int, seed: UInt64) -> DocumentBoundaries {
        precondition(count >= 1 && tokens >= 0)
        func draw(_ index: Int, _ stream: UInt64) -> UInt64 {
            SyntheticInput.mix(SyntheticInput.mix(seed ^ 0xD0C5_0000 ^ stream) ^ UInt64(index))
        }
        var tiny = (0 ..< count).map { draw($0, 1) % 6 == 0 ? Int(draw($0, 2) % 4) : nil as Int? }
        if !tiny.contains(where: { $0 == nil }) { tiny[count / 2] = nil }  // someone takes the rest
        var left = tokens
        for i in 0 ..< count {
            if let length = tiny[i] { tiny[i] = min(length, left); left -= tiny[i]! }
        }
        let weights = (0 ..< count).map { tiny[$0] == nil ? 1 + Double(draw($0, 3) % 50) : 0 }
        let total = weights.reduce(0, +)
        var lengths = [Int](), cumulative = 0.0, given = 0
        for i in 0 ..< count {
            if let length = tiny[i] { lengths.append(length); continue }
            cumulative += weights[i]
            let upTo = Int((Double(left) * cumulative / total).rounded(.down))
            lengths.append(upTo - given)
            given = upTo
        }
        if given < left, let last = (0 ..< count).last(where: { tiny[$0] == nil }) { lengths[last] += left - given }
        return try! DocumentBoundaries(lengths: lengths, tokens: tokens, source: "random documents")
    }

    /// Reads a cu_seqlens .npy (1-D, int32 or int64) and checks it against `tokens`.
    public static func load(_ path: String, tokens: Int) throws -> DocumentBoundaries {
        let source = "--cu-seqlens \(path)"
        let values: [Int]
        do {
            let file = try NpyFile.open(reading: path, dtypes: ["<i4": 4, "<i8": 8])
            guard file.header.shape.count == 1 else {
                throw Invalid(
                    description: "\(source): shape \(NpyHeader.format(file.header.shape)) has \(file.header.shape.count) dimensions; "
                        + "expected a 1-D array [0, l1, l1+l2, ..., tokens]")
            }
            values = try file.readIntegers()
        } catch let NpyError.wrongDType(_, found) {
            throw Invalid(description: "\(source): dtype is '\(found)'; expected int32 or int64 ('<i4' or '<i8'), e.g. np.asarray(cu, dtype=np.int32)")
        }
        return try DocumentBoundaries(offsets: values, tokens: tokens, source: source)
    }

    public var tokens: Int { offsets.last! }
    /// Documents, empty ones included.
    public var count: Int { offsets.count - 1 }

    public var description: String { "\(count) document\(count == 1 ? "" : "s")" }

    /// Positions of document `d`.
    @inlinable public func range(of d: Int) -> Range<Int> { offsets[d] ..< offsets[d + 1] }

    /// The document holding `position` (never an empty one): the last d with offsets[d] <= position.
    /// Positions at or past the end belong to the last document.
    @inlinable public func document(containing position: Int) -> Int {
        var (lo, hi) = (0, count - 1)  // invariant: offsets[lo] <= position, or lo == 0
        if position >= 0 && position < tokens {
            let bucket = position >> Self.bucketShift
            lo = bucketFirst[bucket]
            if bucket + 1 < bucketFirst.count { hi = bucketFirst[bucket + 1] }
        }
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if offsets[mid] <= position { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    /// The positions of the document holding `position`.
    @inlinable public func range(containing position: Int) -> Range<Int> { range(of: document(containing: position)) }

    /// Lengths of the documents, in order.
    public var lengths: [Int] { (0 ..< count).map { offsets[$0 + 1] - offsets[$0] } }
}
