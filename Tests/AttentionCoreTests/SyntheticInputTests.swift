// Synthetic inputs must be a pure function of (seed, tensor, global index): a rank that generates
// only its own rows sees exactly what a single rank generating everything sees.

import AttentionCore
import Testing

@Suite("Synthetic inputs")
struct SyntheticInputTests {
    static let (heads, headDim) = (3, 16)

    static func rows(_ tensor: SyntheticInput.Tensor, seed: UInt64, _ ranges: [Range<Int>]) -> TokenTensor {
        SyntheticInput.tensor(tensor, seed: seed, heads: heads, headDim: headDim, rows: ranges)
    }

    @Test("the same seed gives the same values")
    func deterministic() {
        for tensor in [SyntheticInput.Tensor.query, .key, .value] {
            #expect(Self.rows(tensor, seed: 42, [0 ..< 50]) == Self.rows(tensor, seed: 42, [0 ..< 50]))
            #expect(SyntheticInput.value(seed: 42, tensor: tensor, index: 1234) == SyntheticInput.value(seed: 42, tensor: tensor, index: 1234))
        }
    }

    @Test("rows generated piecewise equal rows generated whole", arguments: [TokenLayout.contiguous, .zigzag])
    func piecewise(_ layout: TokenLayout) {
        let tokens = 101
        let whole = Self.rows(.key, seed: 9, [0 ..< tokens])
        let partition = TokenPartition(tokens: tokens, ranks: 3, layout: layout)
        for rank in 0 ..< 3 {
            let ranges = partition.segments(of: rank)
            #expect(Self.rows(.key, seed: 9, ranges) == whole.rows(ranges), "rank \(rank)")
        }
        // The fill entry point, into a caller's buffer, agrees too.
        let ranges = [90 ..< 101, 3 ..< 7]
        var buffer = [Float](repeating: .nan, count: 15 * Self.heads * Self.headDim)
        buffer.withUnsafeMutableBufferPointer {
            SyntheticInput.fill($0, seed: 9, tensor: .key, rowWidth: Self.heads * Self.headDim, rows: ranges)
        }
        #expect(buffer == whole.rows(ranges).values)
        // And element by element through the indexed value.
        for token in [0, 50, 100] {
            for h in 0 ..< Self.heads {
                #expect(whole[token, h, 5] == SyntheticInput.value(seed: 9, tensor: .key, index: (token * Self.heads + h) * Self.headDim + 5))
            }
        }
    }

    @Test("different seeds and different tensors differ")
    func distinct() {
        let a = Self.rows(.query, seed: 1, [0 ..< 64]).values
        let b = Self.rows(.query, seed: 2, [0 ..< 64]).values
        let c = Self.rows(.key, seed: 1, [0 ..< 64]).values
        let d = Self.rows(.value, seed: 1, [0 ..< 64]).values
        for (x, y, what) in [(a, b, "seeds 1 and 2"), (a, c, "query and key"), (c, d, "key and value")] {
            let same = zip(x, y).filter { $0 == $1 }.count
            // Independent uniform 24-bit values collide about once in 16 million.
            #expect(same <= 2, "\(what): \(same) of \(x.count) values equal")
        }
    }

    @Test("values lie in [-1, 1) and look uniform")
    func range() {
        let values = Self.rows(.value, seed: 3, [0 ..< 2000]).values  // 96,000 values
        #expect(values.allSatisfy { $0 >= -1 && $0 < 1 })
        let mean = values.reduce(0.0) { $0 + Double($1) } / Double(values.count)
        let meanSquare = values.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(values.count)
        // Uniform on [-1, 1): mean 0 and E[x²] = 1/3; standard errors here are about 0.002 and 0.001.
        #expect(abs(mean) < 0.02, "mean \(mean)")
        #expect(abs(meanSquare - 1.0 / 3) < 0.01, "E[x²] \(meanSquare)")
        // Extreme indices and seeds stay in range.
        for index in [0, 1, Int.max, Int.max - 1] {
            for seed in [0, 1, UInt64.max] {
                let x = SyntheticInput.value(seed: seed, tensor: .query, index: index)
                #expect(x >= -1 && x < 1)
            }
        }
    }
}

@Suite("Token tensors")
struct TokenTensorTests {
    @Test("indexing is [token, head, dim] row-major, and rows stacks ranges in order")
    func layout() {
        let values = (0 ..< 5 * 2 * 3).map(Float.init)
        let tensor = TokenTensor(tokens: 5, heads: 2, headDim: 3, values: values)
        #expect(tensor.rowWidth == 6)
        #expect(tensor[0, 0, 0] == 0 && tensor[0, 1, 0] == 3 && tensor[1, 0, 0] == 6 && tensor[4, 1, 2] == 29)
        let picked = tensor.rows([3 ..< 5, 0 ..< 1])
        #expect(picked.tokens == 3 && picked.heads == 2 && picked.headDim == 3)
        #expect(picked.values == Array(values[18 ..< 30]) + Array(values[0 ..< 6]))
        #expect(tensor.rows([]).tokens == 0)
        var zeros = TokenTensor(zerosTokens: 2, heads: 2, headDim: 3)
        zeros[1, 1, 2] = 7
        #expect(zeros.values == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7])
    }
}
