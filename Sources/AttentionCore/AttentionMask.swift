// Masks in global token positions (query i, key j), as ENGINE.md defines them.
// Every mask here shows each query an interval of keys, so a block of the score matrix is
// either hidden (skipped), full (no masking work) or partial (each row clipped to its interval).

public enum AttentionMask: Equatable, Sendable, CustomStringConvertible {
    /// Every query sees every key.
    case none
    /// Query i sees keys j <= i.
    case causal

    /// How a block of queries relates to a block of keys.
    public enum BlockRelation: Equatable, Sendable { case hidden, partial, full }

    public var description: String {
        switch self {
        case .none: return "none"
        case .causal: return "causal"
        }
    }

    /// Keys visible to query `i`, as a half-open interval of global positions (may be empty).
    @inlinable
    public func visibleKeys(query i: Int, head: Int) -> Range<Int> {
        switch self {
        case .none: return Int.min ..< Int.max
        case .causal: return Int.min ..< i + 1
        }
    }

    /// Whether query `i` sees key `j` (the plain definition, used by the reference).
    @inlinable
    public func allows(query i: Int, key j: Int, head: Int) -> Bool {
        visibleKeys(query: i, head: head).contains(j)
    }

    /// The relation of queries `q` to keys `k` (both non-empty global ranges).
    @inlinable
    public func relation(queries q: Range<Int>, keys k: Range<Int>, head: Int) -> BlockRelation {
        switch self {
        case .none:
            return .full
        case .causal:
            if k.lowerBound > q.upperBound - 1 { return .hidden }   // every key after every query
            if k.upperBound - 1 <= q.lowerBound { return .full }    // every key at or before every query
            return .partial
        }
    }

    /// Visible (query, key) pairs among `tokens` tokens: the work a FLOP count should credit.
    public func visiblePairs(tokens: Int, heads: Int = 1) -> Double {
        let t = Double(tokens)
        switch self {
        case .none: return t * t * Double(heads)
        case .causal: return t * (t + 1) / 2 * Double(heads)
        }
    }

    /// FLOPs of attention over `tokens` tokens: 4 per visible pair and head dimension
    /// (2 for Q·Kᵀ, 2 for P·V), ENGINE.md's convention.
    public func flops(tokens: Int, shape: AttentionShape) -> Double {
        4 * Double(shape.headDim) * visiblePairs(tokens: tokens, heads: shape.heads)
    }
}
