// The kernels read Q, K and V as a 16-bit job holds them: 16-bit rows (bf16 or f16 bits) are
// widened in the per-tile and per-kv-head copies, which is exact, so the forward and backward on
// 16-bit rows give the same bits as on the float32 rows holding the same (rounded) values: MHA,
// GQA and MQA (one kv head, where float32 rows are read in place and 16-bit ones must be copied),
// causal and not, a segment that starts past row 0. With bf16 products (where the CPU has bf16
// units) likewise: float32 rows are narrowed and bf16 rows copied into the same operands.

import AttentionCore
import BlasRuntime
import FileFormats
import Testing

@Suite("Kernels on 16-bit K/V rows")
struct SixteenBitRowsTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let type: ElementType
        let kvHeads: Int
        let mask: AttentionMask
        /// Kernel threads: 2 packs every kv head at once, 1 one kv head at a time.
        var threads = 1
        var testDescription: String { "\(type), \(kvHeads) kv heads, \(mask), \(threads) thread(s)" }
    }

    static let cases: [Case] =
        [ElementType.bf16, .f16].flatMap { type in
            [1, 2, 4].flatMap { kv in [AttentionMask.none, .causal].map { Case(type: type, kvHeads: kv, mask: $0) } }
        } + [ElementType.bf16, .f16].map { Case(type: $0, kvHeads: 2, mask: .causal, threads: 2) }

    /// The problem with K and V rounded to `type`, and those values as `type`'s bits.
    static func problem(_ c: Case) throws -> (Problem, keys: [UInt16], values: [UInt16]) {
        var problem = try Problem(tokens: 197, heads: 4, kvHeads: c.kvHeads, headDim: 48, mask: c.mask)
        problem.k.values = problem.k.values.map(c.type.rounded)
        problem.v.values = problem.v.values.map(c.type.rounded)
        problem.q.values = problem.q.values.map(c.type.rounded)
        return (problem, narrowed(problem.k.values, c.type), narrowed(problem.v.values, c.type))
    }

    /// `values` as `type`'s bits.
    static func narrowed(_ values: [Float], _ type: ElementType) -> [UInt16] {
        var out = [UInt16](repeating: 0, count: values.count)
        values.withUnsafeBufferPointer { v in out.withUnsafeMutableBytes { type.narrow(v.baseAddress!, into: $0.baseAddress!, count: values.count) } }
        return out
    }

    /// `values` held in `type` (16 bits for bf16 and f16).
    static func storage(_ values: [Float], _ type: ElementType) -> ElementStorage {
        let storage = ElementStorage(zeroed: values.count, elementType: type)
        storage.store(values, at: 0, count: values.count)
        return storage
    }

    @Test("forward: the same bits as float32 rows of the same values", arguments: cases)
    func forward(_ c: Case) throws { try Self.checkForward(c, products: .float32) }

    @Test("backward: the same dQ, dK and dV bits as float32 rows of the same values", arguments: cases)
    func backward(_ c: Case) throws { try Self.checkBackward(c, products: .float32) }

    /// bf16 products narrow float32 rows and copy bf16 bits: the same operands, so the same bits.
    @Test(
        "bf16 products: forward and backward give the same bits on bf16 rows as on float32 rows", .enabled(if: BF16Gemm.path.usesBF16Units),
        arguments: cases.filter { $0.type == .bf16 })
    func bf16Products(_ c: Case) throws {
        try Self.checkForward(c, products: .bf16)
        try Self.checkBackward(c, products: .bf16)
    }

    static func checkForward(_ c: Case, products: KernelProducts) throws {
        let (problem, keys, values) = try Self.problem(c)
        let tiling = KernelTiling(queryTile: 32, keyBlock: 64)
        // Keys 0..<197 in two segments (the second starting at row 90), as a ring folds them.
        let segments = [ShardSegment(positions: 0 ..< 90, localRow: 0), ShardSegment(positions: 90 ..< 197, localRow: 90)]
        let queries = Self.storage(problem.q.values, c.type)
        func run(_ sixteen: Bool) -> PartialResult {
            let kernel = LocalAttention(shape: problem.shape, mask: c.mask, tiling: tiling, threads: c.threads, products: products)
            let accumulator = AttentionAccumulator(rows: 197, heads: 4, headDim: 48)
            problem.q.values.withUnsafeBufferPointer { q in
                problem.k.values.withUnsafeBufferPointer { k in
                    problem.v.values.withUnsafeBufferPointer { v in
                        keys.withUnsafeBufferPointer { kb in
                            values.withUnsafeBufferPointer { vb in
                                let rows =
                                    sixteen
                                    ? KeyValueRows(bits: kb.baseAddress!, values: vb.baseAddress!, elementType: c.type)
                                    : KeyValueRows(keys: k.baseAddress!, values: v.baseAddress!)
                                for segment in segments {
                                    kernel.accumulate(
                                        queries: sixteen ? queries.rows : ElementRows(q.baseAddress!), querySegments: [ShardSegment(positions: 0 ..< 197, localRow: 0)],
                                        keyValues: rows,
                                        keySegment: segment, into: accumulator)
                                }
                            }
                        }
                    }
                }
            }
            return accumulator.result()
        }
        let wide = run(false), narrow = run(true)
        #expect(bits(narrow) == bits(wide), "\(c.testDescription), \(products) products")
        #expect(wide.output.contains { $0 != 0 })
    }

    static func checkBackward(_ c: Case, products: KernelProducts) throws {
        let (problem, keys, values) = try Self.problem(c)
        let tiling = KernelTiling(queryTile: 32, keyBlock: 64)
        let forward = LocalAttention(shape: problem.shape, mask: c.mask, tiling: tiling, products: products).attention(q: problem.q, k: problem.k, v: problem.v)
        let dO = SyntheticInput.tensor(.value, seed: 99, heads: 4, headDim: 48, rows: [0 ..< 197])
        let segment = ShardSegment(positions: 0 ..< 197, localRow: 0)
        let queries = Self.storage(problem.q.values, c.type)
        func run(_ sixteen: Bool) -> (dq: [Float], dk: [Float], dv: [Float]) {
            let kernel = LocalAttentionBackward(shape: problem.shape, mask: c.mask, tiling: tiling, threads: c.threads, products: products)
            let accumulator = forward.output.withUnsafeBufferPointer { o in
                dO.values.withUnsafeBufferPointer { g in
                    forward.lse.withUnsafeBufferPointer { l in
                        GradientAccumulator(rows: 197, heads: 4, headDim: 48, output: o.baseAddress!, outputGrad: g.baseAddress!, lse: l.baseAddress!)
                    }
                }
            }
            var dk = [Float](repeating: 0, count: 197 * c.kvHeads * 48), dv = dk, dq = [Float](repeating: 0, count: 197 * 4 * 48)
            problem.q.values.withUnsafeBufferPointer { q in
                dO.values.withUnsafeBufferPointer { g in
                    problem.k.values.withUnsafeBufferPointer { k in
                        problem.v.values.withUnsafeBufferPointer { v in
                            keys.withUnsafeBufferPointer { kb in
                                values.withUnsafeBufferPointer { vb in
                                    let rows =
                                        sixteen
                                        ? KeyValueRows(bits: kb.baseAddress!, values: vb.baseAddress!, elementType: c.type)
                                        : KeyValueRows(keys: k.baseAddress!, values: v.baseAddress!)
                                    kernel.accumulate(
                                        queries: sixteen ? queries.rows : ElementRows(q.baseAddress!), outputGrad: g.baseAddress!, querySegment: segment, keyValues: rows,
                                        keySegment: segment, into: accumulator, keyGrad: &dk, valueGrad: &dv)
                                }
                            }
                        }
                    }
                }
            }
            accumulator.finish(dq: &dq)
            return (dq, dk, dv)
        }
        let wide = run(false), narrow = run(true)
        #expect(narrow.dq.map(\.bitPattern) == wide.dq.map(\.bitPattern), "\(c.testDescription), \(products) products")
        #expect(narrow.dk.map(\.bitPattern) == wide.dk.map(\.bitPattern), "\(c.testDescription), \(products) products")
        #expect(narrow.dv.map(\.bitPattern) == wide.dv.map(\.bitPattern), "\(c.testDescription), \(products) products")
        #expect(wide.dk.contains { $0 != 0 })
    }
}
