// The shape of one attention problem and the layout conventions every part shares
// (docs/DESIGN.md): Q and O are [tokens, heads, headDim], K and V are [tokens, kvHeads, headDim],
// LSE is [heads, tokens], all float32 row-major.

/// Head counts, head size and softmax scale. Token counts live with the data, not here.
public struct AttentionShape: Equatable, Sendable, CustomStringConvertible {
    public let heads: Int
    public let kvHeads: Int
    public let headDim: Int
    public let scale: Float

    public enum Invalid: Error, CustomStringConvertible, Equatable {
        case nonPositive(String, Int)
        case headsNotMultipleOfKVHeads(heads: Int, kvHeads: Int)

        public var description: String {
            switch self {
            case let .nonPositive(name, value):
                return "\(name) must be at least 1 (got \(value))"
            case let .headsNotMultipleOfKVHeads(heads, kvHeads):
                return "heads (\(heads)) must be a multiple of kv-heads (\(kvHeads)): each kv head serves heads/kvHeads query heads"
            }
        }
    }

    /// - Parameter scale: softmax scale; `nil` means `1/sqrt(headDim)`.
    public init(heads: Int, kvHeads: Int, headDim: Int, scale: Float? = nil) throws {
        for (name, value) in [("heads", heads), ("kv-heads", kvHeads), ("head-dim", headDim)] where value < 1 {
            throw Invalid.nonPositive(name, value)
        }
        guard heads % kvHeads == 0 else { throw Invalid.headsNotMultipleOfKVHeads(heads: heads, kvHeads: kvHeads) }
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.scale = scale ?? 1 / Float(headDim).squareRoot()
    }

    /// Query heads that share one kv head.
    @inlinable public var groupSize: Int { heads / kvHeads }
    /// The kv head that query head `h` reads.
    @inlinable public func kvHead(of head: Int) -> Int { head / groupSize }
    /// Floats in one token row of Q or O.
    @inlinable public var queryRowWidth: Int { heads * headDim }
    /// Floats in one token row of K or V.
    @inlinable public var kvRowWidth: Int { kvHeads * headDim }

    public var description: String {
        "heads \(heads), kv-heads \(kvHeads), head-dim \(headDim), scale \(scale)"
    }
}
