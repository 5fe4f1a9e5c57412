// Token-major float32 storage: [tokens, heads, headDim], row-major, one row per token.

public struct TokenTensor: Equatable, Sendable {
    public let tokens: Int
    public let heads: Int
    public let headDim: Int
    public var values: [Float]

    public init(tokens: Int, heads: Int, headDim: Int, values: [Float]) {
        precondition(values.count == tokens * heads * headDim, "values do not fill [\(tokens), \(heads), \(headDim)]")
        self.tokens = tokens
        self.heads = heads
        self.headDim = headDim
        self.values = values
    }

    public init(zerosTokens tokens: Int, heads: Int, headDim: Int) {
        self.init(
            tokens: tokens, heads: heads, headDim: headDim,
            values: [Float](repeating: 0, count: tokens * heads * headDim))
    }

    /// Floats in one token row.
    @inlinable public var rowWidth: Int { heads * headDim }

    @inlinable public subscript(token: Int, head: Int, dim: Int) -> Float {
        get { values[(token * heads + head) * headDim + dim] }
        set { values[(token * heads + head) * headDim + dim] = newValue }
    }

    /// The rows of `ranges`, stacked in that order.
    public func rows(_ ranges: [Range<Int>]) -> TokenTensor {
        var out = [Float]()
        out.reserveCapacity(ranges.reduce(0) { $0 + $1.count } * rowWidth)
        for range in ranges { out += values[range.lowerBound * rowWidth ..< range.upperBound * rowWidth] }
        return TokenTensor(tokens: out.count / max(1, rowWidth), heads: heads, headDim: headDim, values: out)
    }
}
