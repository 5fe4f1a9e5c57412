// Any mask as a list of rectangular slices, after MagiAttention: a slice is a range of queries,
// a range of keys and a kind (full, causal, inverse causal, bi-causal), and a pair is visible
// when any slice shows it. Within one slice the keys a query sees are an interval whose bounds
// never decrease along the queries, which is what lets the kernel classify a block, trim it and
// clip its rows from a handful of slices. Two bucket indexes (by query and by key position) find
// the slices near a block, so a mask of thousands of slices costs the kernel no more than one.
// Also: the slice files (.npy int32/int64 [n, 5]) checked row by row, and the families people
// train with (prefix-LM, shared question, block-causal, global + window) built as slices.

import FileFormats

public struct MaskSlice: Equatable, Sendable, CustomStringConvertible {
    /// How a slice's queries see its keys (i = q - q_start, j = k - k_start, lq, lk the lengths).
    public enum Kind: Int, Sendable, CaseIterable {
        /// Every key of the slice.
        case full = 0
        /// Bottom-right aligned: j <= i + (lk - lq), so the last query sees every key.
        case causal = 1
        /// Top-left aligned: j >= i.
        case inverseCausal = 2
        /// Both.
        case biCausal = 3
    }

    public let queries: Range<Int>
    public let keys: Range<Int>
    public let kind: Kind

    public init(queries: Range<Int>, keys: Range<Int>, kind: Kind) {
        self.queries = queries
        self.keys = keys
        self.kind = kind
    }

    public var description: String { "(\(queries.lowerBound), \(queries.upperBound), \(keys.lowerBound), \(keys.upperBound), \(kind.rawValue))" }

    /// The first key query `q` (of `queries`) may see; never decreases with q.
    @inlinable func low(_ q: Int) -> Int {
        kind == .inverseCausal || kind == .biCausal ? keys.lowerBound + (q - queries.lowerBound) : keys.lowerBound
    }

    /// One past the last key query `q` may see (possibly below `low`); never decreases with q.
    @inlinable func high(_ q: Int) -> Int {
        guard kind == .causal || kind == .biCausal else { return keys.upperBound }
        return min(keys.upperBound, keys.upperBound - queries.upperBound + q + 1)
    }

    /// The keys of `within` that query `q` sees through this slice (empty when q is outside it).
    @inlinable public func visibleKeys(query q: Int, within k: Range<Int>) -> Range<Int> {
        guard queries.contains(q) else { return k.lowerBound ..< k.lowerBound }
        let lo = max(low(q), k.lowerBound), hi = min(high(q), k.upperBound)
        return lo < hi ? lo ..< hi : k.lowerBound ..< k.lowerBound
    }

    /// Whether query `q` sees key `k` through this slice: the plain definition.
    public func allows(query q: Int, key k: Int) -> Bool {
        guard queries.contains(q), keys.contains(k) else { return false }
        let (i, j, lq, lk) = (q - queries.lowerBound, k - keys.lowerBound, queries.count, keys.count)
        switch kind {
        case .full: return true
        case .causal: return j <= i + (lk - lq)
        case .inverseCausal: return j >= i
        case .biCausal: return j <= i + (lk - lq) && j >= i
        }
    }

    /// How queries `q` relate to keys `k` through this slice alone.
    @inlinable public func relation(queries q: Range<Int>, keys k: Range<Int>) -> AttentionMask.BlockRelation {
        let rows = q.clamped(to: queries), columns = k.clamped(to: keys)
        if rows.isEmpty || columns.isEmpty { return .hidden }
        if rows == q && columns == k && low(q.upperBound - 1) <= k.lowerBound && high(q.lowerBound) >= k.upperBound { return .full }
        // The visible width of row r, min(high, end) - max(low, start), is concave in r (high and
        // low rise with slope 0 or 1 and are clipped once), so its largest value over the rows
        // lies at an end of them or next to a point where one of its pieces bends.
        let (first, last) = (rows.lowerBound, rows.upperBound - 1)
        let qs = queries.lowerBound, tail = keys.upperBound - queries.upperBound
        let bends = [first, last, columns.upperBound - tail - 1, keys.upperBound - tail - 1, columns.lowerBound - keys.lowerBound + qs]
        for bend in bends {
            for r in [bend - 1, bend, bend + 1] where r >= first && r <= last {
                if min(high(r), columns.upperBound) > max(low(r), columns.lowerBound) { return .partial }
            }
        }
        return .hidden
    }

    /// The keys of `k` some query of `q` may see through this slice: from the first row's low
    /// to the last row's high (both bounds rise along the rows); nil when it shows none.
    @inlinable func visibleSpan(queries q: Range<Int>, keys k: Range<Int>) -> Range<Int>? {
        let rows = q.clamped(to: queries)
        guard !rows.isEmpty else { return nil }
        let lo = max(low(rows.lowerBound), k.lowerBound), hi = min(high(rows.upperBound - 1), k.upperBound)
        return lo < hi ? lo ..< hi : nil
    }

    /// The row (query position) of the slice that sees a key first, and the largest k - q over
    /// the pairs it shows: high(q) - q never rises, so it is that row's. nil when it shows none.
    var largestOffset: Int? {
        var first = queries.lowerBound
        if kind == .causal || kind == .biCausal { first = max(first, queries.upperBound - keys.count) }
        guard first < queries.upperBound, low(first) < high(first) else { return nil }
        return high(first) - 1 - first
    }
}

public struct MaskSlices: Equatable, Sendable, CustomStringConvertible {
    public let slices: [MaskSlice]
    public let tokens: Int
    /// The family the slices were built as ("block-causal 4096"), for descriptions; nil for a file.
    public let name: String?
    /// Slices by the query (key) positions they cover, 2^shift positions per bucket: bucket b's
    /// slices are `byQuery.indices[byQuery.offsets[b] ..< byQuery.offsets[b + 1]]`.
    @usableFromInline let byQuery: BucketIndex
    @usableFromInline let byKey: BucketIndex

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String

        public init(description: String) { self.description = description }
    }

    /// Checks every slice against a sequence of `tokens` tokens; `source` names them in messages.
    public init(_ slices: [MaskSlice], tokens: Int, source: String = "mask slices") throws {
        for (row, slice) in slices.enumerated() {
            func refuse(_ what: String) -> Invalid { Invalid(description: "\(source): row \(row) \(slice): \(what)") }
            for (name, range) in [("q", slice.queries), ("k", slice.keys)] where range.lowerBound < 0 || range.upperBound > tokens {
                throw refuse("\(name) range \(range) lies outside the sequence's 0..<\(tokens); ranges are half-open within it")
            }
        }
        self.init(checked: slices, tokens: tokens)
    }

    /// Slices already known to fit the sequence.
    init(checked slices: [MaskSlice], tokens: Int, name: String? = nil) {
        self.slices = slices
        self.tokens = tokens
        self.name = name
        byQuery = BucketIndex(slices.map(\.queries), tokens: tokens)
        byKey = BucketIndex(slices.map(\.keys), tokens: tokens)
    }

    public static func == (a: MaskSlices, b: MaskSlices) -> Bool { a.tokens == b.tokens && a.slices == b.slices }

    public var description: String {
        let count = "\(slices.count) mask slice\(slices.count == 1 ? "" : "s")"
        return name.map { "\($0) (\(count))" } ?? count
    }

    /// Reads a slice file: int32 or int64 .npy of shape [n, 5], rows (q_start, q_end, k_start,
    /// k_end, kind), and checks every row against `tokens`.
    public static func load(_ path: String, tokens: Int) throws -> MaskSlices {
        let source = "--mask-slices \(path)"
        let values: [Int], shape: [Int]
        do {
            let file = try NpyFile.open(reading: path, dtypes: ["<i4": 4, "<i8": 8])
            shape = file.header.shape
            guard shape.count == 2, shape[1] == 5 else {
                throw Invalid(
                    description: "\(source): shape \(NpyHeader.format(shape)); expected [n, 5], one row (q_start, q_end, k_start, k_end, kind) per slice")
            }
            values = try file.readIntegers()
        } catch let NpyError.wrongDType(_, found) {
            throw Invalid(description: "\(source): dtype is '\(found)'; expected int32 or int64 ('<i4' or '<i8'), e.g. np.asarray(slices, dtype=np.int32)")
        }
        return try MaskSlices(rows: values, tokens: tokens, source: source)
    }

    /// Slices from rows of five integers (flattened), each checked: ranges within 0...tokens,
    /// start <= end, kind 0 to 3.
    public init(rows values: [Int], tokens: Int, source: String) throws {
        precondition(values.count % 5 == 0)
        var slices: [MaskSlice] = []
        slices.reserveCapacity(values.count / 5)
        for row in 0 ..< values.count / 5 {
            let v = Array(values[5 * row ..< 5 * row + 5])
            func refuse(_ what: String) -> Invalid {
                Invalid(description: "\(source): row \(row) (\(v.map(String.init).joined(separator: ", "))): \(what)")
            }
            for (name, start, end) in [("q", v[0], v[1]), ("k", v[2], v[3])] {
                guard start >= 0, end <= tokens else {
                    throw refuse("\(name)_start..\(name)_end \(start)..<\(end) lies outside the sequence's 0..<\(tokens)")
                }
                guard start <= end else { throw refuse("\(name)_start \(start) is after \(name)_end \(end); ranges are half-open, start <= end") }
            }
            guard let kind = MaskSlice.Kind(rawValue: v[4]) else {
                throw refuse("kind \(v[4]) is unknown; expected 0 (full), 1 (causal), 2 (inverse causal) or 3 (bi-causal)")
            }
            slices.append(MaskSlice(queries: v[0] ..< v[1], keys: v[2] ..< v[3], kind: kind))
        }
        self.init(checked: slices, tokens: tokens)
    }

    /// The slices as rows of five integers, flattened (what a slice file holds).
    public var rows: [Int] {
        slices.flatMap { [$0.queries.lowerBound, $0.queries.upperBound, $0.keys.lowerBound, $0.keys.upperBound, $0.kind.rawValue] }
    }

    /// Calls `body` once with each slice whose queries overlap `q` and whose keys overlap `k`;
    /// `body` returns false to stop.
    @inlinable public func forEach(queries q: Range<Int>, keys k: Range<Int>, _ body: (MaskSlice) -> Bool) {
        byQuery.forEach(overlapping: q) { index in
            let slice = slices[index]
            return slice.keys.overlaps(k) ? body(slice) : true
        }
    }

    public func allows(query q: Int, key k: Int) -> Bool {
        var seen = false
        forEach(queries: q ..< q + 1, keys: k ..< k + 1) { slice in
            seen = slice.allows(query: q, key: k)
            return !seen
        }
        return seen
    }

    @inlinable public func relation(queries q: Range<Int>, keys k: Range<Int>) -> AttentionMask.BlockRelation {
        var result = AttentionMask.BlockRelation.hidden
        forEach(queries: q, keys: k) { slice in
            switch slice.relation(queries: q, keys: k) {
            case .full: result = .full; return false
            case .partial: result = .partial
            case .hidden: break
            }
            return true
        }
        return result
    }

    /// The keys of `k` query `q` sees: the hull of the slices' intervals (the union itself may
    /// have gaps: `clipRows` masks those).
    @inlinable public func visibleKeys(query q: Int, within k: Range<Int>) -> Range<Int> {
        var lo = Int.max, hi = Int.min
        forEach(queries: q ..< q + 1, keys: k) { slice in
            let seen = slice.visibleKeys(query: q, within: k)
            if !seen.isEmpty { (lo, hi) = (min(lo, seen.lowerBound), max(hi, seen.upperBound)) }
            return true
        }
        return lo < hi ? lo ..< hi : k.lowerBound ..< k.lowerBound
    }

    /// The hull of the keys of `k` some query of `q` sees (nil: none).
    @inlinable public func visibleSpan(queries q: Range<Int>, keys k: Range<Int>) -> Range<Int>? {
        var lo = Int.max, hi = Int.min
        forEach(queries: q, keys: k) { slice in
            if let span = slice.visibleSpan(queries: q, keys: k) { (lo, hi) = (min(lo, span.lowerBound), max(hi, span.upperBound)) }
            return true
        }
        return lo < hi ? lo ..< hi : nil
    }

    /// The hull of the query ranges of the slices whose keys overlap `k`.
    public func querySpan(seeing k: Range<Int>) -> Range<Int> {
        var lo = Int.max, hi = Int.min
        byKey.forEach(overlapping: k) { index in
            let slice = slices[index]
            if !slice.queries.isEmpty { (lo, hi) = (min(lo, slice.queries.lowerBound), max(hi, slice.queries.upperBound)) }
            return true
        }
        return lo < hi ? lo ..< hi : k.lowerBound ..< k.lowerBound
    }

    /// Whether no slice shows a key after its query.
    public var isCausal: Bool { slices.allSatisfy { ($0.largestOffset ?? 0) <= 0 } }

    /// Sets the scores the slices hide to -inf, row by row (see `AttentionMask.clipRows`): each
    /// row's slices give intervals; the gaps between their union and the block are cleared.
    func clipRows(_ scores: UnsafeMutablePointer<Float>, rows: Int, rowStride: Int, queryPositions: Range<Int>, keyPositions: Range<Int>) {
        var near: [MaskSlice] = []
        forEach(queries: queryPositions.lowerBound ..< queryPositions.lowerBound + rows, keys: keyPositions) {
            near.append($0); return true
        }
        var intervals: [Range<Int>] = []
        intervals.reserveCapacity(near.count)
        for r in 0 ..< rows {
            let q = queryPositions.lowerBound + r
            intervals.removeAll(keepingCapacity: true)
            for slice in near {
                let seen = slice.visibleKeys(query: q, within: keyPositions)
                if !seen.isEmpty { intervals.append(seen) }
            }
            if intervals.count > 1 { intervals.sort { $0.lowerBound < $1.lowerBound } }
            let row = scores + r * rowStride
            var covered = keyPositions.lowerBound
            for seen in intervals {
                if seen.lowerBound > covered { (row + covered - keyPositions.lowerBound).update(repeating: -.infinity, count: seen.lowerBound - covered) }
                covered = max(covered, seen.upperBound)
            }
            if covered < keyPositions.upperBound { (row + covered - keyPositions.lowerBound).update(repeating: -.infinity, count: keyPositions.upperBound - covered) }
        }
    }

    /// Visible pairs of the queries `q` over the keys `k`: the length of each row's union.
    public func visiblePairs(queries q: Range<Int>, keys k: Range<Int>) -> Double {
        var pairs = 0.0
        var intervals: [Range<Int>] = []
        let all = k.clamped(to: 0 ..< tokens)
        for position in q.clamped(to: 0 ..< tokens) {
            intervals.removeAll(keepingCapacity: true)
            forEach(queries: position ..< position + 1, keys: all) { slice in
                let seen = slice.visibleKeys(query: position, within: all)
                if !seen.isEmpty { intervals.append(seen) }
                return true
            }
            if intervals.count == 1 { pairs += Double(intervals[0].count); continue }
            intervals.sort { $0.lowerBound < $1.lowerBound }
            var covered = Int.min
            for seen in intervals {
                let from = max(covered, seen.lowerBound)
                if seen.upperBound > from { pairs += Double(seen.upperBound - from) }
                covered = max(covered, seen.upperBound)
            }
        }
        return pairs
    }
}

/// Which of a list of ranges cover each run of 2^shift positions: finding the ranges that
/// overlap a span reads only the buckets the span touches.
public struct BucketIndex: Sendable {
    @usableFromInline let shift: Int
    @usableFromInline let offsets: [Int]
    @usableFromInline let indices: [Int]
    @usableFromInline let ranges: [Range<Int>]

    init(_ ranges: [Range<Int>], tokens: Int) {
        // At most about 4096 buckets, each of 64 positions or more.
        var shift = 6
        while tokens >> shift > 4096 { shift += 1 }
        let buckets = max(1, (tokens + (1 << shift) - 1) >> shift)
        var counts = [Int](repeating: 0, count: buckets + 1)
        for range in ranges where !range.isEmpty {
            for b in range.lowerBound >> shift ... (range.upperBound - 1) >> shift { counts[b + 1] += 1 }
        }
        for b in 0 ..< buckets { counts[b + 1] += counts[b] }
        var fill = counts, indices = [Int](repeating: 0, count: counts[buckets])
        for (i, range) in ranges.enumerated() where !range.isEmpty {
            for b in range.lowerBound >> shift ... (range.upperBound - 1) >> shift {
                indices[fill[b]] = i
                fill[b] += 1
            }
        }
        (self.shift, offsets, self.indices, self.ranges) = (shift, counts, indices, ranges)
    }

    /// Calls `body` once with the index of each range overlapping `span`, until it returns false.
    @inlinable func forEach(overlapping span: Range<Int>, _ body: (Int) -> Bool) {
        guard !span.isEmpty, span.lowerBound < (offsets.count - 1) << shift else { return }
        let firstBucket = max(0, span.lowerBound) >> shift
        let lastBucket = min((span.upperBound - 1) >> shift, offsets.count - 2)
        for b in firstBucket ... lastBucket {
            for n in offsets[b] ..< offsets[b + 1] {
                let i = indices[n], range = ranges[i]
                guard range.overlaps(span) else { continue }
                // Once per range: in the first bucket it shares with the span.
                if max(range.lowerBound, span.lowerBound) >> shift != b { continue }
                if !body(i) { return }
            }
        }
    }
}

extension MaskSlices {
    /// `count` slices drawn from `seed` over `tokens` tokens: every kind, ranges of every length
    /// (a quarter of them 0 to 2 tokens), overlapping one another. For tests and benchmarks.
    public static func random(count: Int, tokens: Int, seed: UInt64) -> MaskSlices {
        var draws: UInt64 = 0
        func next(_ bound: Int) -> Int {
            draws += 1
            return Int(SyntheticInput.mix(SyntheticInput.mix(seed ^ 0x511C_E000) ^ draws) % UInt64(bound))
        }
        func range() -> Range<Int> {
            let start = next(tokens + 1)
            return start ..< min(tokens, start + (next(4) == 0 ? next(3) : next(tokens - start + 1)))
        }
        let slices = (0 ..< count).map { _ in MaskSlice(queries: range(), keys: range(), kind: MaskSlice.Kind(rawValue: next(4))!) }
        return MaskSlices(checked: slices, tokens: tokens)
    }
}

// The families, as slices. Each takes the packed documents it works within where that makes
// sense (one document: the whole sequence).
extension MaskSlices {
    /// Causal, sliding window `w` over the queries `span`, keys from `span`'s start on: while a
    /// query's window reaches back past the start, one causal slice from the start; after that
    /// one bi-causal slice whose keys run `w - 1` behind its queries.
    static func window(_ w: Int, over span: Range<Int>) -> [MaskSlice] {
        guard !span.isEmpty else { return [] }
        let ramp = min(span.upperBound, span.lowerBound + w)
        var slices = [MaskSlice(queries: span.lowerBound ..< ramp, keys: span.lowerBound ..< ramp, kind: .causal)]
        if ramp < span.upperBound { slices.append(MaskSlice(queries: ramp ..< span.upperBound, keys: ramp - w + 1 ..< span.upperBound, kind: .biCausal)) }
        return slices
    }

    /// A mask without S2 (none, causal, window, and packed documents around them) as slices:
    /// the same visible pairs. nil for S2 (and slices themselves).
    public static func equivalent(to mask: AttentionMask, tokens: Int) -> MaskSlices? {
        func slices(_ inner: AttentionMask, _ span: Range<Int>) -> [MaskSlice]? {
            guard !span.isEmpty else { return [] }
            switch inner {
            case .none: return [MaskSlice(queries: span, keys: span, kind: .full)]
            case .causal: return [MaskSlice(queries: span, keys: span, kind: .causal)]
            case let .window(w): return window(w, over: span)
            default: return nil
            }
        }
        var made: [MaskSlice] = []
        if case let .documents(documents, inner) = mask {
            for d in 0 ..< documents.count {
                guard let part = slices(inner, documents.range(of: d)) else { return nil }
                made += part
            }
        } else {
            guard let part = slices(mask, 0 ..< tokens) else { return nil }
            made = part
        }
        return MaskSlices(checked: made, tokens: tokens)
    }

    /// Prefix-LM per document: the first `prefix` tokens of each document see each other
    /// (bidirectional), every later token sees the prefix and, causally, the tokens before it.
    public static func prefixLM(prefix: Int, documents: DocumentBoundaries) -> MaskSlices {
        precondition(prefix >= 0)
        var made: [MaskSlice] = []
        for d in 0 ..< documents.count {
            let span = documents.range(of: d)
            guard !span.isEmpty else { continue }
            let cut = min(span.upperBound, span.lowerBound + prefix)
            if cut > span.lowerBound { made.append(MaskSlice(queries: span.lowerBound ..< cut, keys: span.lowerBound ..< cut, kind: .full)) }
            // Bottom-right aligned: query cut + i sees keys up to cut + i.
            if cut < span.upperBound { made.append(MaskSlice(queries: cut ..< span.upperBound, keys: span, kind: .causal)) }
        }
        return MaskSlices(checked: made, tokens: documents.tokens, name: "prefix-LM \(prefix)\(documents.count > 1 ? " per document" : "")")
    }

    /// Shared question: a prompt of `lengths[0]` tokens (causal), then answers of the other
    /// lengths, each seeing the whole prompt and itself (causal), never a sibling.
    public static func sharedQuestion(lengths: [Int]) -> MaskSlices {
        precondition(!lengths.isEmpty && lengths.allSatisfy { $0 >= 0 })
        let prompt = 0 ..< lengths[0]
        var made = prompt.isEmpty ? [] : [MaskSlice(queries: prompt, keys: prompt, kind: .causal)]
        var start = prompt.upperBound
        for length in lengths.dropFirst() where length > 0 {
            let answer = start ..< start + length
            if !prompt.isEmpty { made.append(MaskSlice(queries: answer, keys: prompt, kind: .full)) }
            made.append(MaskSlice(queries: answer, keys: answer, kind: .causal))
            start += length
        }
        return MaskSlices(checked: made, tokens: start, name: "shared question, \(lengths.count - 1) answers")
    }

    /// Block-causal per document: blocks of `block` tokens from each document's start; every
    /// token sees its whole block and every earlier block of its document.
    public static func blockCausal(block: Int, documents: DocumentBoundaries) -> MaskSlices {
        precondition(block >= 1)
        var made: [MaskSlice] = []
        for d in 0 ..< documents.count {
            let span = documents.range(of: d)
            for start in stride(from: span.lowerBound, to: span.upperBound, by: block) {
                let end = min(span.upperBound, start + block)
                made.append(MaskSlice(queries: start ..< end, keys: span.lowerBound ..< end, kind: .full))
            }
        }
        return MaskSlices(checked: made, tokens: documents.tokens, name: "block-causal \(block)\(documents.count > 1 ? " per document" : "")")
    }

    /// Global + window: the first `global` tokens see every token and every token sees them;
    /// the others see, besides, a causal sliding window of `window` tokens.
    public static func globalWindow(global: Int, window w: Int, tokens: Int) -> MaskSlices {
        precondition(global >= 0 && w >= 1)
        let g = min(global, tokens)
        var made: [MaskSlice] = []
        if g > 0 {
            made.append(MaskSlice(queries: 0 ..< g, keys: 0 ..< tokens, kind: .full))
            if g < tokens { made.append(MaskSlice(queries: g ..< tokens, keys: 0 ..< g, kind: .full)) }
        }
        made += window(w, over: g ..< tokens)
        return MaskSlices(checked: made, tokens: tokens, name: "global \(global) + window \(w)")
    }
}
