// Which global token positions each rank holds. Uneven splits are normal input: sizes differ by
// at most one token per chunk, and a rank may hold nothing when there are fewer tokens than chunks.
// Packed documents get layouts of their own (any lengths, no padding): zigzag inside every
// document, or whole documents per rank; `balanced` picks, per run, the one that evens out the
// work (visible pairs of the queries each rank holds) best.

/// How a sequence of `tokens` tokens is cut over `ranks` ranks.
public enum TokenLayout: String, Sendable, CaseIterable {
    /// Rank r holds one contiguous chunk, r-th of P.
    case contiguous
    /// The sequence is cut into 2P chunks; rank r holds chunks r and 2P-1-r, which evens out causal work.
    case zigzag
}

/// How packed documents are laid over the layout's positions.
public enum DocumentLayout: String, Sendable, CaseIterable {
    /// Every document cut into 2P chunks, position p holding chunks p and 2P-1-p of it (zigzag per
    /// document, TransformerEngine's THD scheme for any length); the pairing rotates by one
    /// position per document, so the odd tokens of short documents spread over the positions.
    case headTail = "head-tail"
    /// Whole documents: largest work first, each to the position with the least work that has room
    /// (at most 5/4 of an even share of the tokens, so memory stays linear in tokens / P).
    case whole
    /// The documents of most work cut head-tail, the others whole on top: as many cut as make the
    /// kernel work most even, so long documents even out and short ones stay in larger segments.
    case mixed
}

public struct TokenPartition: Equatable, Sendable {
    public let tokens: Int
    public let ranks: Int
    public let layout: TokenLayout
    /// Ranks that share one position of the layout (mesh's head groups): the layout is laid over
    /// ranks / groupSize positions, and each piece of a position's tokens is split evenly over
    /// the group's ranks (rank r is member r % groupSize of position r / groupSize).
    public let groupSize: Int
    /// Packed documents laid out their own way (nil: `layout` holds); then `documentSegments`
    /// holds each position's ranges.
    public let documentLayout: DocumentLayout?
    private let documentSegments: [[Range<Int>]]

    public init(tokens: Int, ranks: Int, layout: TokenLayout, groupSize: Int = 1) {
        precondition(tokens >= 0 && ranks >= 1 && groupSize >= 1 && ranks % groupSize == 0)
        self.tokens = tokens
        self.ranks = ranks
        self.layout = layout
        self.groupSize = groupSize
        documentLayout = nil
        documentSegments = []
    }

    /// `documents` laid over the positions as `documentLayout` says (`mask` weighs whole
    /// documents; `tiling` the kernel work that mixed balances); nil when whole documents cannot
    /// keep every position within its token cap.
    public init?(
        documents: DocumentBoundaries, ranks: Int, layout: TokenLayout, groupSize: Int = 1,
        documentLayout: DocumentLayout, mask: AttentionMask, tiling: KernelTiling = KernelTiling()
    ) {
        precondition(ranks >= 1 && groupSize >= 1 && ranks % groupSize == 0)
        let n = ranks / groupSize
        let weighed = Self.weighed(documents, mask: mask)
        func partition(_ held: [[Range<Int>]]) -> TokenPartition {
            TokenPartition(documents.tokens, ranks, layout, groupSize, documentLayout, held.map(Self.merged))
        }
        switch documentLayout {
        case .headTail: self = partition(Self.laidOut(weighed, tokens: documents.tokens, positions: n, mask: mask, split: documents.count)!.held)
        case .whole:
            guard let laid = Self.laidOut(weighed, tokens: documents.tokens, positions: n, mask: mask, split: 0) else { return nil }
            self = partition(laid.held)
        case .mixed:
            // Cut the 1, 2, 3, ... documents of most work (1, 2, 4, ... beyond 64), fewer than all,
            // and keep the count whose kernel work is the most even. The kernel work walks every
            // tile, so the counts are ranked first by how evenly they share the visible pairs
            // (which laying out tracks anyway) and only the best few are walked: the search
            // stays linear in the tokens however many documents there are.
            var screened: [(held: [[Range<Int>]], spread: Double)] = []
            var split = 1
            while split < documents.count {
                if let laid = Self.laidOut(weighed, tokens: documents.tokens, positions: n, mask: mask, split: split) {
                    let mean = laid.work.reduce(0, +) / Double(n)
                    screened.append((laid.held, mean > 0 ? laid.work.max()! / mean : 1))
                }
                split = split < 64 ? split + 1 : 2 * split
            }
            // A stable sort: among equal spreads, the fewest documents cut.
            let finalists = screened.enumerated().sorted { ($0.element.spread, $0.offset) < ($1.element.spread, $1.offset) }.prefix(4)
            var best: (partition: TokenPartition, imbalance: Double, order: Int)?
            for (order, candidate) in finalists {
                let laid = partition(candidate.held)
                let imbalance = laid.imbalance(mask: mask, tiling: tiling)
                if best == nil || imbalance < best!.imbalance - 1e-9 || (abs(imbalance - best!.imbalance) <= 1e-9 && order < best!.order) {
                    best = (laid, imbalance, order)
                }
            }
            guard let best else { return nil }
            self = best.partition
        }
    }

    private init(
        _ tokens: Int, _ ranks: Int, _ layout: TokenLayout, _ groupSize: Int, _ documentLayout: DocumentLayout,
        _ documentSegments: [[Range<Int>]]
    ) {
        (self.tokens, self.ranks, self.layout, self.groupSize) = (tokens, ranks, layout, groupSize)
        self.documentLayout = documentLayout
        self.documentSegments = documentSegments
    }

    /// Layout positions (ring length): ranks / groupSize.
    public var positions: Int { ranks / groupSize }

    /// Chunk `c` of `count` equal-as-possible chunks of `tokens` (sizes differ by at most one).
    @inlinable public static func chunk(_ c: Int, of count: Int, tokens: Int) -> Range<Int> {
        (c * tokens / count) ..< ((c + 1) * tokens / count)
    }

    /// Global token ranges held by `rank`, in the order its rows are stored (never empty ranges).
    public func segments(of rank: Int) -> [Range<Int>] {
        positionSegments(rank / groupSize).map { part in
            let member = rank % groupSize
            return part.lowerBound + Self.chunk(member, of: groupSize, tokens: part.count).lowerBound
                ..< part.lowerBound + Self.chunk(member, of: groupSize, tokens: part.count).upperBound
        }.filter { !$0.isEmpty }
    }

    /// Global token ranges of one layout position (all of its group's rows), in storage order.
    public func positionSegments(_ position: Int) -> [Range<Int>] {
        let n = positions
        if documentLayout != nil { return documentSegments[position] }
        switch layout {
        case .contiguous:
            return [Self.chunk(position, of: n, tokens: tokens)]
        case .zigzag:
            return [Self.chunk(position, of: 2 * n, tokens: tokens), Self.chunk(2 * n - 1 - position, of: 2 * n, tokens: tokens)]
        }
    }

    /// The segments of `rank`, stored back to back as its shard holds them.
    public func stackedSegments(of rank: Int) -> [ShardSegment] { ShardSegment.stacked(segments(of: rank)) }

    /// Rows stored by `rank`.
    public func rowCount(of rank: Int) -> Int { segments(of: rank).reduce(0) { $0 + $1.count } }

    /// The largest shard: what a buffer that receives any rank's shard must hold.
    public var maxRowCount: Int { (0 ..< ranks).map(rowCount(of:)).max() ?? 0 }
}

extension TokenPartition {
    /// The partition for `mask`: with packed documents, the lowest max/mean kernel work over ranks
    /// (`imbalance`, at `tiling`) among
    /// the strategy's own `layout` and the document layouts (only `documentLayout` when given);
    /// whole documents win within 5%, since a ring over them ends after the local block and their
    /// segments are large (measured, 4 ranks, 50 causal documents in 32768 tokens: whole at 1.032
    /// ran in 0.373 s, head-tail at 1.004 in 0.413 s, mixed at 1.003 in 0.415-0.448 s), and mixed
    /// wins within 1% over head-tail, as it cuts fewer, larger pieces. Without documents, `layout`
    /// as it is.
    public static func balanced(
        tokens: Int, ranks: Int, layout: TokenLayout, groupSize: Int = 1, mask: AttentionMask,
        documentLayout: DocumentLayout? = nil, tiling: KernelTiling = KernelTiling()
    ) -> TokenPartition {
        let own = TokenPartition(tokens: tokens, ranks: ranks, layout: layout, groupSize: groupSize)
        if case let .slices(slices) = mask, slices.tokens == tokens, ranks > 1 {
            return balanced(slices: slices, own: own, mask: mask, documentLayout: documentLayout, tiling: tiling)
        }
        guard let documents = mask.documents, documents.tokens == tokens else { return own }
        let laid = (documentLayout.map { [$0] } ?? DocumentLayout.allCases).compactMap {
            TokenPartition(documents: documents, ranks: ranks, layout: layout, groupSize: groupSize, documentLayout: $0, mask: mask, tiling: tiling)
        }
        let candidates = (documentLayout == nil ? [own] : []) + laid
        let scored = candidates.map { (partition: $0, imbalance: $0.imbalance(mask: mask, tiling: tiling)) }
        let best = scored.min { $0.imbalance < $1.imbalance } ?? (own, 1)
        for (layout, margin) in [(DocumentLayout.whole, 1.05), (.mixed, 1.01)] {
            if let near = scored.first(where: { $0.partition.documentLayout == layout && $0.imbalance <= best.imbalance * margin }) { return near.partition }
        }
        return best.partition
    }

    /// Mask slices: the strategy's own layout, or the sequence cut into pieces (about 16 per
    /// position, whole query tiles, cut also where a slice's queries start or end, so that a
    /// piece's rows see alike) laid out as documents are, whichever gives the lowest max/mean
    /// kernel work; the own layout wins within 1% (its two large segments per rank).
    private static func balanced(
        slices: MaskSlices, own: TokenPartition, mask: AttentionMask, documentLayout: DocumentLayout?, tiling: KernelTiling
    ) -> TokenPartition {
        let (tokens, n) = (own.tokens, own.positions)
        let step = max(tiling.queryTile, (tokens / (16 * n)) / tiling.queryTile * tiling.queryTile)
        var cuts = Set(stride(from: 0, through: tokens, by: step)).union([tokens])
        for slice in slices.slices where !slice.queries.isEmpty { cuts.formUnion([slice.queries.lowerBound, slice.queries.upperBound]) }
        // Cuts within half a tile of the one kept before are dropped (tiny pieces cost the
        // kernel more than they balance); the end always stays.
        var offsets = [0]
        for cut in cuts.sorted() where cut - offsets.last! >= tiling.queryTile / 2 { offsets.append(cut) }
        if offsets.last! < tokens {
            if offsets.count == 1 { offsets.append(tokens) } else { offsets[offsets.count - 1] = tokens }
        }
        guard let pieces = try? DocumentBoundaries(offsets: offsets, tokens: tokens, source: "slice pieces") else { return own }
        let laid = (documentLayout.map { [$0] } ?? [.whole, .mixed]).compactMap {
            TokenPartition(documents: pieces, ranks: own.ranks, layout: own.layout, groupSize: own.groupSize, documentLayout: $0, mask: mask, tiling: tiling)
        }
        let ownImbalance = own.imbalance(mask: mask, tiling: tiling)
        let best = laid.map { ($0, $0.imbalance(mask: mask, tiling: tiling)) }.min { $0.1 < $1.1 }
        guard let best, documentLayout != nil || best.1 < ownImbalance / 1.01 else { return own }
        return best.0
    }

    /// Visible (query, key) pairs of the queries `rank` holds, per head: its share of the work.
    public func work(of rank: Int, mask: AttentionMask) -> Double {
        segments(of: rank).reduce(0) { $0 + mask.visiblePairs(queries: $1, tokens: tokens, heads: 1) }
    }

    /// Scores the kernel computes, per head, for the query rows of `rank` (of its whole group,
    /// which shares them head by head, in mesh) when every rank's segments come by as key
    /// segments, as in a ring pass: the visible pairs, plus the hidden keys of the partial blocks
    /// the kernel trims but computes (a causal diagonal's masked half). It walks the kernel's
    /// tiles and blocks, only those a tile may see, so it is exact for masks without S2's alignment.
    public func kernelWork(of rank: Int, mask: AttentionMask, tiling: KernelTiling = KernelTiling()) -> Double {
        kernelWork(of: rank, mask: mask, tiling: tiling, keys: (0 ..< ranks).flatMap(segments(of:)).sorted { $0.lowerBound < $1.lowerBound })
    }

    private func kernelWork(of rank: Int, mask: AttentionMask, tiling: KernelTiling, keys: [Range<Int>]) -> Double {
        let group = rank / groupSize * groupSize
        var work = 0.0
        for querySegment in (group ..< group + groupSize).flatMap(segments(of:)) {
            for start in stride(from: querySegment.lowerBound, to: querySegment.upperBound, by: tiling.queryTile) {
                let tile = start ..< min(start + tiling.queryTile, querySegment.upperBound)
                guard tokens > 0, mask.relation(queries: tile, keys: 0 ..< tokens, head: 0) != .hidden else { continue }
                let seen = mask.visibleSpan(queries: tile, keys: 0 ..< tokens, head: 0)
                // The first key segment that ends after the span starts, then on while they start before it ends.
                var (lo, hi) = (0, keys.count)
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if keys[mid].upperBound <= seen.lowerBound { lo = mid + 1 } else { hi = mid }
                }
                for keySegment in keys[lo...] {
                    if keySegment.lowerBound >= seen.upperBound { break }
                    var blockStart = keySegment.lowerBound + max(0, (seen.lowerBound - keySegment.lowerBound) / tiling.keyBlock * tiling.keyBlock)
                    while blockStart < min(keySegment.upperBound, seen.upperBound) {
                        let block = blockStart ..< min(blockStart + tiling.keyBlock, keySegment.upperBound)
                        switch mask.relation(queries: tile, keys: block, head: 0) {
                        case .hidden: break
                        case .full: work += Double(tile.count * block.count)
                        case .partial: work += Double(tile.count * mask.visibleSpan(queries: tile, keys: block, head: 0).count)
                        }
                        blockStart = block.upperBound
                    }
                }
            }
        }
        return work
    }

    /// Key positions that some query `rank` holds sees and `rank` does not hold: what it must
    /// receive, at the kernel's granularity (a tile's visible span within each block of
    /// `tiling.keyBlock` keys, so a partial block's trimmed keys count as it computes them).
    public func keysNeeded(by rank: Int, mask: AttentionMask, tiling: KernelTiling = KernelTiling()) -> Int {
        guard tokens > 0 else { return 0 }
        var seen: [Range<Int>] = []
        for querySegment in segments(of: rank) {
            for start in stride(from: querySegment.lowerBound, to: querySegment.upperBound, by: tiling.queryTile) {
                let tile = start ..< min(start + tiling.queryTile, querySegment.upperBound)
                // S2 answers for keys within one of its blocks only (and differs by head): its
                // blocks are cut at its alignment, and a block any head sees counts.
                let alignment = mask.keyBlockAlignment
                let heads = alignment == nil ? 1 : (mask.s2Pattern?.stride ?? 1)
                guard alignment != nil || mask.relation(queries: tile, keys: 0 ..< tokens, head: 0) != .hidden else { continue }
                let hull = mask.visibleSpan(queries: tile, keys: 0 ..< tokens, head: 0)
                var blockStart = hull.lowerBound
                while blockStart < hull.upperBound {
                    var end = min(blockStart + tiling.keyBlock, hull.upperBound)
                    if let alignment { end = min(end, (blockStart / alignment + 1) * alignment) }
                    let block = blockStart ..< end
                    blockStart = end
                    for head in 0 ..< heads {
                        let relation = mask.relation(queries: tile, keys: block, head: head)
                        if relation == .full || (relation == .partial && alignment != nil) { seen.append(block); break }
                        if relation == .partial { seen.append(mask.visibleSpan(queries: tile, keys: block, head: head)); break }
                    }
                }
            }
        }
        // The union of what is seen, less what the rank holds (both sorted and disjoint).
        var union: [Range<Int>] = []
        for range in seen.sorted(by: { $0.lowerBound < $1.lowerBound }) where !range.isEmpty {
            if let last = union.last, last.upperBound >= range.lowerBound {
                union[union.count - 1] = last.lowerBound ..< max(last.upperBound, range.upperBound)
            } else {
                union.append(range)
            }
        }
        // Both sorted and disjoint: one sweep subtracts what is held.
        let held = Self.merged(segments(of: rank))
        var (needed, h) = (0, 0)
        for range in union {
            needed += range.count
            while h < held.count && held[h].upperBound <= range.lowerBound { h += 1 }
            var k = h
            while k < held.count && held[k].lowerBound < range.upperBound {
                needed -= range.clamped(to: held[k]).count
                k += 1
            }
        }
        return needed
    }

    /// Max over mean of the ranks' kernel work (`kernelWork`; 1 when there is none).
    public func imbalance(mask: AttentionMask, tiling: KernelTiling = KernelTiling()) -> Double {
        let keys = (0 ..< ranks).flatMap(segments(of:)).sorted { $0.lowerBound < $1.lowerBound }
        let work = (0 ..< ranks).map { kernelWork(of: $0, mask: mask, tiling: tiling, keys: keys) }
        let mean = work.reduce(0, +) / Double(ranks)
        return mean > 0 ? work.max()! / mean : 1
    }

    /// The non-empty documents with their visible pairs, most work first (ties: longer, then earlier).
    static func weighed(_ documents: DocumentBoundaries, mask: AttentionMask) -> [(document: Int, span: Range<Int>, work: Double)] {
        (0 ..< documents.count).filter { !documents.range(of: $0).isEmpty }
            .map { (document: $0, span: documents.range(of: $0), work: mask.visiblePairs(queries: documents.range(of: $0), tokens: documents.tokens, heads: 1)) }
            .sorted { ($0.work, $0.span.count, -$0.document) > ($1.work, $1.span.count, -$1.document) }
    }

    /// Each position's ranges (and visible pairs) when the `split` documents of most work
    /// (`weighed`, in order) are cut head-tail and the others placed whole, most work first, on
    /// the position with the least work that has room (see `DocumentLayout`); nil when some whole
    /// document finds no position with room.
    static func laidOut(
        _ weighed: [(document: Int, span: Range<Int>, work: Double)], tokens: Int, positions n: Int, mask: AttentionMask, split: Int
    ) -> (held: [[Range<Int>]], work: [Double])? {
        let cap = (tokens * 5 + 4 * n - 1) / (4 * n)
        var work = [Double](repeating: 0, count: n), rows = [Int](repeating: 0, count: n)
        var held = [[Range<Int>]](repeating: [], count: n)
        func place(_ piece: Range<Int>, on p: Int, work pieceWork: Double? = nil) {
            work[p] += pieceWork ?? mask.visiblePairs(queries: piece, tokens: tokens, heads: 1)
            rows[p] += piece.count
            held[p].append(piece)
        }
        for (d, span, _) in weighed.prefix(split) {
            for p in 0 ..< n {
                let head = (p + d) % n
                for c in [head, 2 * n - 1 - head] {
                    let part = chunk(c, of: 2 * n, tokens: span.count)
                    if !part.isEmpty { place(span.lowerBound + part.lowerBound ..< span.lowerBound + part.upperBound, on: p) }
                }
            }
        }
        for (_, span, spanWork) in weighed.dropFirst(split) {
            var chosen: Int?
            for p in 0 ..< n where rows[p] + span.count <= cap && (chosen == nil || work[p] < work[chosen!]) { chosen = p }
            guard let chosen else { return nil }
            place(span, on: chosen, work: spanWork)
        }
        return (held, work)
    }

    /// Ranges sorted by position, touching ones joined.
    static func merged(_ ranges: [Range<Int>]) -> [Range<Int>] {
        ranges.sorted { $0.lowerBound < $1.lowerBound }.reduce(into: []) { result, range in
            if let last = result.last, last.upperBound == range.lowerBound {
                result[result.count - 1] = last.lowerBound ..< range.upperBound
            } else {
                result.append(range)
            }
        }
    }
}

/// A run of rows stored contiguously in a shard: global positions `positions`, first local row `localRow`.
public struct ShardSegment: Equatable, Sendable {
    public let positions: Range<Int>
    public let localRow: Int

    public init(positions: Range<Int>, localRow: Int) {
        self.positions = positions
        self.localRow = localRow
    }

    /// The segments of a shard whose rows are `ranges` stored back to back.
    public static func stacked(_ ranges: [Range<Int>]) -> [ShardSegment] {
        var row = 0
        return ranges.map { range in
            defer { row += range.count }
            return ShardSegment(positions: range, localRow: row)
        }
    }
}

/// A shard's segments with the means to find, fast, those that overlap a range of positions.
/// With packed documents a shard may hold thousands of segments; pairing each query segment
/// with each key segment would cost their product, so strategies ask a mask which queries may
/// see a key segment (`AttentionMask.querySpan`) and take only the segments there.
public struct SegmentIndex: Sendable {
    public let segments: [ShardSegment]
    /// Indices of the non-empty segments, by position (a shard's segments never overlap).
    private let byPosition: [Int]

    public init(_ segments: [ShardSegment]) {
        self.segments = segments
        byPosition = segments.indices.filter { !segments[$0].positions.isEmpty }
            .sorted { segments[$0].positions.lowerBound < segments[$1].positions.lowerBound }
    }

    /// The segments overlapping `span`, in storage order (so results do not depend on the index).
    public func overlapping(_ span: Range<Int>) -> [ShardSegment] {
        var (lo, hi) = (0, byPosition.count)  // the first segment that ends after the span starts
        while lo < hi {
            let mid = (lo + hi) / 2
            if segments[byPosition[mid]].positions.upperBound <= span.lowerBound { lo = mid + 1 } else { hi = mid }
        }
        var found: [Int] = []
        for i in byPosition[lo...] {
            if segments[i].positions.lowerBound >= span.upperBound { break }
            found.append(i)
        }
        return found.count == 1 ? [segments[found[0]]] : found.sorted().map { segments[$0] }
    }

    /// The query segments that may see a key of `keys` under `mask` (a superset: the kernel's
    /// relation decides).
    public func seeing(_ keys: Range<Int>, mask: AttentionMask) -> [ShardSegment] {
        keys.isEmpty ? [] : overlapping(mask.querySpan(seeing: keys))
    }

    /// The rows of `keys` (a block's segments) that some query of these segments may see, each
    /// with the row it starts at in the block, in the block's order: per `chunk` positions of a
    /// key segment (cut at multiples of `chunk`), the hull of the mask's spans over the query
    /// segments that see it, adjacent hulls joined, so keys no query sees stay home when they
    /// fill a chunk (a global prefix and a far window in one segment travel as two ranges).
    /// S2 answers for keys within one of its blocks only (and differs by head): a segment that
    /// some query segment may see is read whole.
    public func keysRead(from keys: [ShardSegment], mask: AttentionMask, chunk: Int = 256) -> [ShardSegment] {
        precondition(chunk > 0)
        var read: [ShardSegment] = []
        for segment in keys {
            let queries = seeing(segment.positions, mask: mask)
            if mask.keyBlockAlignment != nil {
                if !queries.isEmpty { read.append(segment) }
                continue
            }
            guard !queries.isEmpty else { continue }
            var spans: [Range<Int>] = []
            var start = segment.positions.lowerBound
            while start < segment.positions.upperBound {
                let piece = start ..< min(segment.positions.upperBound, (start / chunk + 1) * chunk)
                start = piece.upperBound
                var (lo, hi) = (Int.max, Int.min)
                for q in queries where mask.relation(queries: q.positions, keys: piece, head: 0) != .hidden {
                    let span = mask.visibleSpan(queries: q.positions, keys: piece, head: 0)
                    (lo, hi) = (min(lo, span.lowerBound), max(hi, span.upperBound))
                }
                guard lo < hi else { continue }
                if let last = spans.last, last.upperBound >= lo {
                    spans[spans.count - 1] = last.lowerBound ..< max(last.upperBound, hi)
                } else {
                    spans.append(lo ..< hi)
                }
            }
            for span in spans {
                read.append(ShardSegment(positions: span, localRow: segment.localRow + span.lowerBound - segment.positions.lowerBound))
            }
        }
        return read
    }
}
