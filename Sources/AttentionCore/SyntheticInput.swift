// Deterministic synthetic Q, K, V. Every value is a hash of (seed, tensor, global index), so a
// rank generates exactly its own rows and every world size sees identical inputs, with no
// communication and nothing generated twice.

public enum SyntheticInput {
    public enum Tensor: UInt64, Sendable { case query = 1, key = 2, value = 3, outputGrad = 4 }

    /// SplitMix64's finaliser: a strong 64-bit mix, cheap enough to call per element.
    @inlinable @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), from the top 24 bits of the hash.
    @inlinable @inline(__always)
    public static func value(seed: UInt64, tensor: Tensor, index: Int) -> Float {
        let h = mix(mix(seed &* 0x2545_F491_4F6C_DD1D ^ tensor.rawValue) ^ UInt64(truncatingIfNeeded: index))
        return Float(h >> 40) * (2 / 16_777_216) - 1
    }

    /// Fills `buffer` with the rows `ranges` (global token positions, stacked in order) of a
    /// tensor whose rows hold `rowWidth` values.
    public static func fill(
        _ buffer: UnsafeMutableBufferPointer<Float>, seed: UInt64, tensor: Tensor,
        rowWidth: Int, rows ranges: [Range<Int>]
    ) {
        var at = 0
        for range in ranges {
            for index in range.lowerBound * rowWidth ..< range.upperBound * rowWidth {
                buffer[at] = value(seed: seed, tensor: tensor, index: index)
                at += 1
            }
        }
    }

    /// Rows `ranges` of a synthetic tensor as a value.
    public static func tensor(_ tensor: Tensor, seed: UInt64, heads: Int, headDim: Int, rows ranges: [Range<Int>]) -> TokenTensor {
        let count = ranges.reduce(0) { $0 + $1.count }
        var values = [Float](repeating: 0, count: count * heads * headDim)
        values.withUnsafeMutableBufferPointer { fill($0, seed: seed, tensor: tensor, rowWidth: heads * headDim, rows: ranges) }
        return TokenTensor(tokens: count, heads: heads, headDim: headDim, values: values)
    }
}
