// Masks in global token positions (query i, key j), as docs/DESIGN.md defines them.
// The kernel asks three things of a mask: how a block of queries relates to a block of keys
// (hidden: skipped; full: no masking work; partial: rows clipped), which keys of a block one
// query sees (always an interval, given the kernel cuts key blocks at `keyBlockAlignment`), and
// how many pairs are visible in all (for FLOP counts). `allows` is the plain definition that the
// float64 reference tests pair by pair. Packed documents wrap another mask: a query's visible keys
// are the inner mask's, cut to its document, so they stay an interval whose bounds never decrease
// along the queries, and a block across document boundaries is hidden.

public enum AttentionMask: Equatable, Sendable, CustomStringConvertible {
    /// Every query sees every key.
    case none
    /// Query i sees keys j <= i.
    case causal
    /// Causal, and only the last `W` keys: j <= i and i - j < W.
    case window(Int)
    /// S2-Attention's per-head block-sparse pattern (causal).
    case s2(S2Pattern)
    /// Packed documents: query i sees key j only when both lie in the same document and `inner`
    /// (none, causal or window; never S2 or documents) allows the pair.
    indirect case documents(DocumentBoundaries, within: AttentionMask)
    /// Any mask, as rectangular slices (MagiAttention's): a pair is visible when a slice shows it.
    case slices(MaskSlices)

    /// How a block of queries relates to a block of keys.
    public enum BlockRelation: Equatable, Sendable { case hidden, partial, full }

    public var description: String {
        switch self {
        case .none: return "none"
        case .causal: return "causal"
        case let .window(w): return "window \(w)"
        case let .s2(p): return "s2 (block \(p.block), local \(p.local), stride \(p.stride))"
        case let .documents(documents, inner): return inner == .none ? "\(documents)" : "\(inner) within \(documents)"
        case let .slices(slices): return "\(slices)"
        }
    }

    /// Whether the mask hides every key after the query (so causal load balancing applies).
    public var isCausal: Bool {
        switch self {
        case .none: return false
        case .causal, .window, .s2: return true
        case let .documents(_, inner): return inner.isCausal
        case let .slices(slices): return slices.isCausal
        }
    }

    /// The documents of a packed sequence, when the mask has them.
    public var documents: DocumentBoundaries? {
        if case let .documents(documents, _) = self { return documents }
        return nil
    }

    /// The S2 pattern, when the mask is one.
    public var s2Pattern: S2Pattern? {
        if case let .s2(pattern) = self { return pattern }
        return nil
    }

    /// Key blocks must not straddle a multiple of this (global positions); nil: any cut works.
    public var keyBlockAlignment: Int? {
        if case let .s2(p) = self { return p.block }
        return nil
    }

    /// Whether query `i` sees key `j`: the plain definition.
    public func allows(query i: Int, key j: Int, head: Int) -> Bool {
        switch self {
        case .none: return true
        case .causal: return j <= i
        case let .window(w): return j <= i && i - j < w
        case let .s2(p): return j <= i && p.isActive(queryBlock: i / p.block, keyBlock: j / p.block, head: head)
        case let .documents(documents, inner): return documents.range(containing: i).contains(j) && inner.allows(query: i, key: j, head: head)
        case let .slices(slices): return slices.allows(query: i, key: j)
        }
    }

    /// The keys of `keys` that query `i` sees, as an interval (possibly empty). `keys` must not
    /// straddle a multiple of `keyBlockAlignment`. Slices: the interval's hull (empty exactly
    /// when the query sees none; `clipRows` masks the gaps).
    @inlinable
    public func visibleKeys(query i: Int, head: Int, within keys: Range<Int>) -> Range<Int> {
        switch self {
        case .none:
            return keys
        case .causal:
            return keys.clamped(to: keys.lowerBound ..< max(keys.lowerBound, i + 1))
        case let .window(w):
            let lo = min(max(keys.lowerBound, i - w + 1), keys.upperBound)
            return lo ..< max(lo, min(keys.upperBound, i + 1))
        case let .s2(p):
            guard p.isActive(queryBlock: i / p.block, keyBlock: keys.lowerBound / p.block, head: head) else {
                return keys.lowerBound ..< keys.lowerBound
            }
            return keys.lowerBound ..< max(keys.lowerBound, min(keys.upperBound, i + 1))
        case let .documents(documents, inner):
            // The inner interval cut to the document; both bounds stay non-decreasing in i (an
            // empty result sits at the keys' start before the document, at their end after it).
            let document = documents.range(containing: i)
            let seen = inner.visibleKeys(query: i, head: head, within: keys)
            let lo = min(max(seen.lowerBound, document.lowerBound), keys.upperBound)
            return lo ..< max(lo, min(seen.upperBound, document.upperBound))
        case let .slices(slices):
            return slices.visibleKeys(query: i, within: keys)
        }
    }

    /// The keys of `k` that some query of `q` sees: the span a partial block can be trimmed to.
    /// Interval masks whose bounds never decrease with the query (none, causal, window) see, over
    /// the queries, from the first query's lower bound to the last query's upper bound; S2 blocks
    /// are one pattern block already and stay whole.
    @inlinable
    public func visibleSpan(queries q: Range<Int>, keys k: Range<Int>, head: Int) -> Range<Int> {
        if case .s2 = self { return k }
        if case let .slices(slices) = self { return slices.visibleSpan(queries: q, keys: k) ?? k }
        let first = visibleKeys(query: q.lowerBound, head: head, within: k)
        let last = visibleKeys(query: q.upperBound - 1, head: head, within: k)
        return first.lowerBound < last.upperBound ? first.lowerBound ..< last.upperBound : k
    }

    /// Positions that may hold a query seeing some key of `k` (non-empty): a range the queries
    /// that do see one lie in, so a strategy pairs a key segment only with the query segments
    /// it overlaps (with packed documents, a few of thousands) before asking `relation`.
    public func querySpan(seeing k: Range<Int>) -> Range<Int> {
        switch self {
        case .none:
            return 0 ..< Int.max
        case .causal, .s2:
            return k.lowerBound ..< Int.max
        case let .window(w):
            let (end, overflow) = k.upperBound.addingReportingOverflow(max(0, w - 1))
            return k.lowerBound ..< (overflow ? Int.max : end)
        case let .documents(documents, inner):
            let first = documents.document(containing: k.lowerBound), last = documents.document(containing: k.upperBound - 1)
            return inner.querySpan(seeing: k).clamped(to: documents.offsets[first] ..< documents.offsets[last + 1])
        case let .slices(slices):
            return slices.querySpan(seeing: k)
        }
    }

    /// The relation of queries `q` to keys `k` (both non-empty global ranges).
    @inlinable
    public func relation(queries q: Range<Int>, keys k: Range<Int>, head: Int) -> BlockRelation {
        let (firstQuery, lastQuery, firstKey, lastKey) = (q.lowerBound, q.upperBound - 1, k.lowerBound, k.upperBound - 1)
        switch self {
        case .none:
            return .full
        case .causal:
            if firstKey > lastQuery { return .hidden }
            return lastKey <= firstQuery ? .full : .partial
        case let .window(w):
            if firstKey > lastQuery || firstQuery - lastKey >= w { return .hidden }
            return lastKey <= firstQuery && lastQuery - firstKey < w ? .full : .partial
        case let .s2(p):
            if firstKey > lastQuery { return .hidden }
            let keyBlock = firstKey / p.block
            var active = 0, blocks = 0
            for queryBlock in firstQuery / p.block ... lastQuery / p.block {
                blocks += 1
                if p.isActive(queryBlock: queryBlock, keyBlock: keyBlock, head: head) { active += 1 }
            }
            if active == 0 { return .hidden }
            return active == blocks && lastKey <= firstQuery ? .full : .partial
        case let .documents(documents, inner):
            let innerRelation = inner.relation(queries: q, keys: k, head: head)
            if innerRelation == .hidden { return .hidden }
            let (firstQueryDocument, lastQueryDocument) = (documents.document(containing: firstQuery), documents.document(containing: lastQuery))
            let (firstKeyDocument, lastKeyDocument) = (documents.document(containing: firstKey), documents.document(containing: lastKey))
            let (first, last) = (max(firstQueryDocument, firstKeyDocument), min(lastQueryDocument, lastKeyDocument))
            if first > last { return .hidden }  // no document holds both a query and a key
            if firstQueryDocument == lastQueryDocument && firstKeyDocument == lastKeyDocument { return innerRelation }
            // Several documents: a non-empty one strictly between the first and last shared ones
            // lies wholly inside both blocks, and every inner mask lets a query see itself.
            if last - first >= 2 && documents.offsets[last] > documents.offsets[first + 1] { return .partial }
            func sees(_ d: Int) -> Bool {
                let span = documents.range(of: d)
                let (queries, keys) = (q.clamped(to: span), k.clamped(to: span))
                return !queries.isEmpty && !keys.isEmpty && inner.relation(queries: queries, keys: keys, head: head) != .hidden
            }
            return sees(first) || sees(last) ? .partial : .hidden
        case let .slices(slices):
            return slices.relation(queries: q, keys: k)
        }
    }

    /// Visible (query, key) pairs among `tokens` tokens, summed over `heads` heads.
    public func visiblePairs(tokens: Int, heads: Int = 1) -> Double {
        let t = Double(tokens)
        switch self {
        case .none:
            return t * t * Double(heads)
        case .causal:
            return t * (t + 1) / 2 * Double(heads)
        case let .window(w):
            let w = Double(w)
            let pairs = t <= w ? t * (t + 1) / 2 : w * (w + 1) / 2 + (t - w) * w
            return pairs * Double(heads)
        case let .s2(p):
            return (0 ..< heads).reduce(0) { $0 + p.visiblePairs(tokens: tokens, head: $1) }
        case let .documents(documents, inner):
            return documents.offsets.indices.dropLast().reduce(0) { total, d in
                let span = documents.range(of: d).clamped(to: 0 ..< tokens)
                return total + inner.visiblePairs(tokens: span.count, heads: heads)
            }
        case let .slices(slices):
            return slices.visiblePairs(queries: 0 ..< tokens, keys: 0 ..< tokens) * Double(heads)
        }
    }

    /// Visible (query, key) pairs for the queries at `queries` over keys 0..<tokens, summed over
    /// `heads` heads, counted row by row (for a few queries, as star has).
    public func visiblePairs(queries: Range<Int>, tokens: Int, heads: Int) -> Double {
        if case let .documents(documents, inner) = self {
            // Document by document, by arithmetic: the rows of one document see what the inner
            // mask gives a sequence that starts at the document's start.
            var pairs = 0.0, start = queries.lowerBound
            let end = min(queries.upperBound, tokens, documents.tokens)
            while start < end {
                let span = documents.range(containing: start)
                let stop = min(end, span.upperBound)
                pairs += inner.rowPairs(
                    rows: start - span.lowerBound ..< stop - span.lowerBound,
                    length: min(span.upperBound, tokens) - span.lowerBound)
                start = stop
            }
            return pairs * Double(heads)
        }
        if case let .slices(slices) = self { return slices.visiblePairs(queries: queries, keys: 0 ..< tokens) * Double(heads) }
        var pairs = 0.0
        for h in 0 ..< heads {
            for i in queries {
                switch self {
                case .none: pairs += Double(tokens)
                case .causal: pairs += Double(min(i + 1, tokens))
                case let .window(w): pairs += Double(max(0, min(i + 1, tokens) - max(0, i - w + 1)))
                case .documents, .slices:
                    preconditionFailure("handled above")
                case let .s2(p):
                    var key = 0
                    while key < min(i + 1, tokens) {
                        let end = min(min(i + 1, tokens), (key / p.block + 1) * p.block)
                        if p.isActive(queryBlock: i / p.block, keyBlock: key / p.block, head: h) { pairs += Double(end - key) }
                        key = end
                    }
                }
            }
        }
        return pairs
    }

    /// Visible pairs of rows `rows` (0 is the first token) of a sequence of `length` tokens, by
    /// arithmetic: for none, causal and window masks, which look the same from every start.
    func rowPairs(rows: Range<Int>, length: Int) -> Double {
        // Sum of min(r + 1, cap) over the rows: 1 + 2 + ... up to the cap, then cap per row.
        func capped(_ cap: Int) -> Double {
            let ramp = rows.clamped(to: rows.lowerBound ..< max(rows.lowerBound, cap))
            let flat = rows.count - ramp.count
            return Double(ramp.count) * Double(ramp.lowerBound + 1 + ramp.upperBound) / 2 + Double(flat) * Double(cap)
        }
        switch self {
        case .none: return Double(rows.count) * Double(length)
        case .causal: return capped(length)
        case let .window(w): return capped(min(w, length))
        case .s2, .documents, .slices: preconditionFailure("rowPairs is for none, causal and window masks")
        }
    }

    /// FLOPs of attention over `tokens` tokens: 4 per visible pair and head dimension
    /// (2 for Q·Kᵀ, 2 for P·V), docs/DESIGN.md's convention.
    public func flops(tokens: Int, shape: AttentionShape) -> Double {
        4 * Double(shape.headDim) * visiblePairs(tokens: tokens, heads: shape.heads)
    }
}

/// S2-Attention's pattern: tokens in blocks of `block`; query block qb sees key block kb of head
/// h iff kb <= qb and (qb - kb < local, or (kb + h) % stride == 0); token-level causal inside the
/// diagonal block. With at least `stride` heads the union over heads covers every block pair.
public struct S2Pattern: Equatable, Sendable {
    public let block: Int
    public let local: Int
    public let stride: Int

    public enum Invalid: Error, CustomStringConvertible {
        case nonPositive(String, Int)
        public var description: String {
            switch self {
            case let .nonPositive(name, value): return "\(name) must be at least 1 (got \(value))"
            }
        }
    }

    public init(block: Int, local: Int, stride: Int) throws {
        for (name, value) in [("s2-block", block), ("s2-local", local), ("s2-stride", stride)] where value < 1 {
            throw Invalid.nonPositive(name, value)
        }
        self.block = block
        self.local = local
        self.stride = stride
    }

    @inlinable
    public func isActive(queryBlock qb: Int, keyBlock kb: Int, head: Int) -> Bool {
        kb <= qb && (qb - kb < local || (kb + head) % stride == 0)
    }

    /// Visible pairs of one head, by arithmetic over query blocks (no per-pair loop).
    public func visiblePairs(tokens: Int, head: Int) -> Double {
        let blocks = (tokens + block - 1) / block
        let firstStrided = (stride - head % stride) % stride  // smallest kb with (kb + head) % stride == 0
        var pairs = 0.0
        for qb in 0 ..< blocks {
            let rows = Double(min(block, tokens - qb * block))
            // Off-diagonal active blocks are all full-size: only the last block is short, and it is diagonal.
            let localBlocks = min(local, qb + 1) - 1  // local blocks before the diagonal
            let lastStrided = qb - max(local, 1)  // strided blocks are those before the local band
            let strided = lastStrided >= firstStrided ? (lastStrided - firstStrided) / stride + 1 : 0
            pairs += rows * Double(block) * Double(localBlocks + strided) + rows * (rows + 1) / 2
        }
        return pairs
    }
}
