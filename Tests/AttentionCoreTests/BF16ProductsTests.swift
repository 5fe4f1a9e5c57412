// bf16 products (oneDNN): which path a CPU gets, the float-to-bf16 narrowing against
// ElementType.bf16's bits, BF16Gemm against exact integer products, and the kernel with bf16
// products against the float64 reference on the bf16-rounded inputs (odd token counts, head dims
// 32..128, MHA/GQA/MQA, every mask, small tiles, two threads), forward and backward
// (SixteenBitRowsTests checks that bf16 and float32 rows give the same bits). The tests that
// multiply need a CPU with bf16 units; on others they are reported as skipped, and the path's
// test checks that bf16 is widened there.

import AttentionCore
import BlasRuntime
import FileFormats
import Foundation
import Testing

@Suite("bf16 products")
struct BF16ProductsTests {
    static let onUnits = BF16Gemm.path.usesBF16Units

    @Test("the path: oneDNN exactly where the CPU has bf16 units, never with SEQPAR_BF16_GEMM=off")
    func path() {
        var zen3 = CPUFeatures(vendor: "AuthenticAMD", family: 25, model: 1)
        (zen3.avx, zen3.avx2, zen3.fma) = (true, true, true)
        let without = BF16Gemm.decidePath(cpu: zen3, setting: nil)
        #expect(!without.usesBF16Units && without.description.contains("no bf16 units"), "\(without)")
        let off = BF16Gemm.decidePath(cpu: .current, setting: "off")
        #expect(!off.usesBF16Units && off.description.contains("SEQPAR_BF16_GEMM=off"), "\(off)")
        let cpu = CPUFeatures.current
        if ProcessInfo.processInfo.environment["SEQPAR_BF16_GEMM"] == nil {
            #expect(BF16Gemm.path.usesBF16Units == (cpu.avx512bf16 || cpu.amxBF16), "\(cpu.summary): \(BF16Gemm.path)")
        }
        #expect(KernelProducts.for(.f32) == .float32 && KernelProducts.for(.f16) == .float32)
        #expect(KernelProducts.for(.bf16) == (BF16Gemm.path.usesBF16Units ? .bf16 : .float32))
    }

    @Test("narrowing gives ElementType.bf16's bits (the instruction: subnormals to zero): ties to even, NaN, infinities, the largest floats, every tail length")
    func narrowing() {
        var values: [Float] = [
            0, -0, 1, -1, .infinity, -.infinity, .nan, -.nan, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
            .leastNonzeroMagnitude, .leastNormalMagnitude, Float(bitPattern: 0x7FFF_FFFF), Float(bitPattern: 0x7F80_0001),
        ]
        for high in [0x3F80, 0x3F81, 0x4049, 0x0001, 0x7F7F] as [UInt32] {  // exactly half-way, both parities, and either side
            for low in [0x7FFF, 0x8000, 0x8001] as [UInt32] { values.append(Float(bitPattern: high << 16 | low)) }
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0 ..< 300 { values.append(Float(bitPattern: UInt32.random(in: 0 ... .max, using: &generator))) }
        for instruction in [false] + (BF16Gemm.hasConversionInstruction ? [true] : []) {
            // The instruction flushes float32 subnormals to a zero of their sign.
            let expected = values.map { instruction && $0.isSubnormal ? ($0.sign == .minus ? 0x8000 : 0) : ElementType.bf16($0) }
            for count in Array(0 ... 40) + [values.count] {
                var out = [UInt16](repeating: 0xABCD, count: count + 1)
                out.withUnsafeMutableBufferPointer { narrowToBF16(values, into: $0.baseAddress!, count: count, instruction: instruction) }
                for i in 0 ..< count where out[i] != expected[i] {
                    let nan = Float(bitPattern: UInt32(out[i]) << 16).isNaN && values[i].isNaN
                    #expect(
                        nan,
                        "\(instruction ? "instruction" : "integer path"): \(values[i]) (0x\(String(values[i].bitPattern, radix: 16))) gave 0x\(String(out[i], radix: 16)), expected 0x\(String(expected[i], radix: 16))"
                    )
                }
                #expect(out[count] == 0xABCD, "wrote past \(count) values")
            }
        }
    }

    @Test("splitting into high and low bf16 parts: high is the rounded value, high + low within 2^-17 of it")
    func splitting() {
        var generator = SystemRandomNumberGenerator()
        let values = (0 ..< 1000).map { _ in Float.random(in: -3 ... 3, using: &generator) * Float(1 << Int.random(in: 0 ... 20, using: &generator)) / 1024 }
        for count in [0, 1, 15, 16, 17, 33, values.count] {
            var high = [UInt16](repeating: 0, count: count), low = [UInt16](repeating: 0, count: count)
            high.withUnsafeMutableBufferPointer { h in
                low.withUnsafeMutableBufferPointer { l in splitToBF16(values, high: h.baseAddress!, low: l.baseAddress!, count: count) }
            }
            for i in 0 ..< count {
                let sum = ElementType.float(bf16: high[i]) + ElementType.float(bf16: low[i])
                #expect(high[i] == ElementType.bf16(values[i]) && abs(sum - values[i]) <= abs(values[i]) / 131_072, "\(values[i]): \(high[i]) + \(low[i]) = \(sum)")
            }
        }
    }

    @Test("the bf16 weights' exp2 (degree 4) is within 3e-6 of 2^x over the kernel's range, exactly 0 below -125 and for -inf, exactly 1 at 0")
    func exp2ForBF16() {
        var worst = 0.0
        for i in 0 ... 1 << 16 {  // [-125, 12]: the kernel's scores lie below its recompute threshold
            let x = -125 + 137 * Float(i) / Float(1 << 16)
            let y = vectorExp2ScoresForBF16(FloatVector(repeating: x))[0]
            worst = max(worst, abs(Double(y) / Foundation.exp2(Double(x)) - 1))
        }
        #expect(worst <= 3e-6, "max relative error \(worst)")
        let special = vectorExp2ScoresForBF16(FloatVector(repeating: -.infinity)), tiny = vectorExp2ScoresForBF16(FloatVector(repeating: -125.5))
        #expect(special == FloatVector(repeating: 0) && tiny == FloatVector(repeating: 0))
        #expect(vectorExp2ScoresForBF16(FloatVector(repeating: 0)) == FloatVector(repeating: 1))
    }

    /// The row pass the bf16 forward runs (AVX512-BF16's two-register conversion) against the
    /// formula it implements, written in Swift: bits, sum of the rounded weights and max alike.
    @Test(
        "the bf16 softmax row by the conversion instruction: the bits of roundedToBF16(2^(s - m)), their sum, the max, every tail length",
        .enabled(if: BF16Gemm.hasConversionInstruction, "needs AVX512-BF16"))
    func exp2Row() {
        var generator = SystemRandomNumberGenerator()
        for count in [0, 1, 15, 16, 17, 31, 32, 33, 48, 63, 64, 100, 512, 513] {
            // Scores in base-2 units around a running max of 3, some masked (-inf), some past it.
            let row = (0 ..< count).map { i in i % 7 == 3 ? -Float.infinity : Float.random(in: -40 ... 5, using: &generator) }
            let m: Float = 3
            var bits = [UInt16](repeating: 0xFFFF, count: count + 1)  // one past the end: must stay
            let (sum, max) = row.withUnsafeBufferPointer { r in
                bits.withUnsafeMutableBufferPointer { exp2RowToBF16(r.baseAddress!, minus: m, bits: $0.baseAddress!, count: count) }
            }
            var (expectedSum, expectedMax) = (0.0, -Double.infinity)
            for (i, s) in row.enumerated() {
                let e = vectorExp2ScoresForBF16(FloatVector(repeating: s - m))[0]
                #expect(bits[i] == ElementType.bf16(e), "count \(count), score \(s): bits \(bits[i]), expected \(ElementType.bf16(e))")
                expectedSum += Double(ElementType.float(bf16: ElementType.bf16(e)))
                expectedMax = Swift.max(expectedMax, Double(s - m))
            }
            #expect(bits[count] == 0xFFFF, "count \(count): wrote past the end")
            #expect(abs(Double(sum) - expectedSum) <= 1e-6 * Swift.max(1, expectedSum), "count \(count): sum \(sum), expected \(expectedSum)")
            #expect(Double(max) == expectedMax, "count \(count): max \(max), expected \(expectedMax)")
        }
    }

    @Test("BF16Gemm: exact on small integers, for the products the kernel makes (Bᵀ, accumulate, alpha, strides, tails)", .enabled(if: onUnits))
    func products() {
        let gemm = BF16Gemm()
        for (m, n, k, transposed, accumulate, alpha) in [
            (384, 512, 128, true, true, Float(0.125)), (384, 128, 512, false, true, 1), (1, 77, 64, true, false, 0.5), (33, 48, 96, false, true, 1),
            (7, 5, 3, true, true, 2), (256, 32, 480, false, true, 1),
        ] {
            let (lda, ldb, ldc) = (k + 3, (transposed ? k : n) + 5, n + 7)
            let a = (0 ..< m * lda).map { ElementType.bf16(Float($0 % 7) - 3) }
            let b = (0 ..< (transposed ? n : k) * ldb).map { ElementType.bf16(Float($0 % 5) - 2) }
            var c = (0 ..< m * ldc).map { Float($0 % 3) }
            let before = c
            gemm.multiply(m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, transposedB: transposed, accumulate: accumulate, c: &c, ldc: ldc)
            var wrong = 0
            for i in 0 ..< m {
                for j in 0 ..< ldc {
                    var expected = before[i * ldc + j]
                    if j < n {
                        var sum: Float = 0
                        for l in 0 ..< k {
                            let bv = transposed ? b[j * ldb + l] : b[l * ldb + j]
                            sum += ElementType.float(bf16: a[i * lda + l]) * ElementType.float(bf16: bv)
                        }
                        expected = alpha * sum + (accumulate ? expected : 0)
                    }
                    if c[i * ldc + j] != expected { wrong += 1 }  // columns past n: untouched
                }
            }
            #expect(wrong == 0, "\(m)x\(n)x\(k) transposed \(transposed) accumulate \(accumulate) alpha \(alpha): \(wrong) wrong elements")
        }
        #expect(gemm.shapesMade == 6)
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let tokens, heads, kvHeads, headDim: Int
        let mask: AttentionMask
        var testDescription: String { "T=\(tokens) h=\(heads)/\(kvHeads) d=\(headDim) \(mask)" }
    }

    static let cases: [Case] = [
        Case(tokens: 1, heads: 4, kvHeads: 4, headDim: 32, mask: .none),
        Case(tokens: 7, heads: 8, kvHeads: 1, headDim: 64, mask: .causal),
        Case(tokens: 129, heads: 8, kvHeads: 2, headDim: 80, mask: .none),
        Case(tokens: 203, heads: 4, kvHeads: 4, headDim: 128, mask: .causal),
        Case(tokens: 301, heads: 4, kvHeads: 2, headDim: 32, mask: .window(37)),
        Case(tokens: 1000, heads: 8, kvHeads: 2, headDim: 64, mask: .causal),
        Case(tokens: 777, heads: 4, kvHeads: 1, headDim: 128, mask: .none),
        Case(tokens: 500, heads: 4, kvHeads: 2, headDim: 96, mask: .documents(try! DocumentBoundaries(lengths: [120, 1, 250, 129], tokens: 500), within: .causal)),
    ]

    /// The problem with Q, K and V rounded to bf16: the inputs a bf16 job computes on.
    static func rounded(_ c: Case) throws -> Problem {
        var problem = try Problem(tokens: c.tokens, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, mask: c.mask)
        for keyPath in [\Problem.q, \Problem.k, \Problem.v] as [WritableKeyPath<Problem, TokenTensor>] {
            problem[keyPath: keyPath].values = problem[keyPath: keyPath].values.map(ElementType.bf16.rounded)
        }
        return problem
    }

    /// P rounded to bf16 (2^-9 relative) is the error; O of magnitude about 1 stays within 1e-2
    /// of float64 (verify's bf16 tolerance), LSE (the log of the rounded P's float32 sum) within 4e-3.
    @Test("the kernel with bf16 products against float64 of the rounded inputs, whole and in small tiles on two threads", .enabled(if: onUnits), arguments: cases)
    func againstFloat64(_ c: Case) throws {
        let problem = try Self.rounded(c)
        let reference = problem.reference()
        let float32 = ResultError(problem.kernel(), reference)
        let lseScale = max(1, reference.lse.lazy.filter(\.isFinite).map(abs).max() ?? 1)
        for (tiling, threads) in [(KernelTiling(), 1), (KernelTiling(queryTile: 32, keyBlock: 64), 2), (KernelTiling(queryTile: 48, keyBlock: 80), 1)] {
            let bf16 = ResultError(problem.kernel(tiling: tiling, threads: threads, products: .bf16), reference)
            #expect(bf16.output <= 1e-2 && bf16.lse <= 4e-3 * lseScale, "\(tiling), \(threads) threads: \(bf16)")
            // bf16 really ran: P's rounding shows, far above the float32 kernel's error.
            if c.tokens > 1 { #expect(bf16.output > 10 * float32.output, "bf16 \(bf16) against float32 \(float32): were the products float32?") }
        }
    }

    /// The backward with bf16 products (P and dS rounded to bf16) from the bf16 forward, against
    /// the float64 backward of the rounded inputs and dO: within 2e-2 of the largest gradient,
    /// and visibly coarser than the float32 kernels' (the products really were bf16).
    @Test("the backward with bf16 products against float64 of the rounded inputs, whole and in small tiles on two threads", .enabled(if: onUnits), arguments: cases)
    func backwardAgainstFloat64(_ c: Case) throws {
        let problem = try Self.rounded(c)
        var dO = BackwardTests.outputGrad(problem)
        dO.values = dO.values.map(ElementType.bf16.rounded)
        let reference = ReferenceBackward.compute(
            q: problem.q, queryPositions: problem.queryPositions, k: problem.k, v: problem.v,
            keyPositions: problem.keyPositions, outputGrad: dO, shape: problem.shape, mask: problem.mask)
        let largest = (reference.dq + reference.dk + reference.dv).map(abs).max() ?? 1
        func errors(_ products: KernelProducts, _ tiling: KernelTiling, _ threads: Int) -> [Double] {
            let forward = LocalAttention(shape: problem.shape, mask: problem.mask, tiling: tiling, threads: threads, products: products)
                .attention(q: problem.q, k: problem.k, v: problem.v)
            let g = LocalAttentionBackward(shape: problem.shape, mask: problem.mask, tiling: tiling, threads: threads, products: products)
                .gradients(q: problem.q, k: problem.k, v: problem.v, forward: forward, outputGrad: dO)
            return [maxAbsError(g.dq.values, reference.dq), maxAbsError(g.dk.values, reference.dk), maxAbsError(g.dv.values, reference.dv)]
        }
        let float32 = errors(.float32, KernelTiling(), 1)
        for (tiling, threads) in [(KernelTiling(), 1), (KernelTiling(queryTile: 32, keyBlock: 64), 2), (KernelTiling(queryTile: 48, keyBlock: 80), 1)] {
            let bf16 = errors(.bf16, tiling, threads)
            for (name, (error, wide)) in zip(["dQ", "dK", "dV"], zip(bf16, float32)) {
                #expect(error <= 2e-2 * max(largest, 1e-3), "\(c.testDescription), \(tiling), \(threads) threads: \(name) error \(error) (largest gradient \(largest))")
                if c.tokens > 1 { #expect(error > 4 * wide, "\(name): bf16 \(error) against float32 \(wide): were the products float32?") }
            }
        }
    }
}
