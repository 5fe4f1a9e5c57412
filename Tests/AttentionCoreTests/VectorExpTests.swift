// The kernels' exponentials against libm in float64: vectorExpScores (the backward's exp) and
// vectorExp2Scores (the forward's exp2, on base-2 scores) are a few ulp over the ranges the kernels
// feed them, exactly 0 below float's range (including -inf, which is how masked scores arrive), and
// exactly 1 at 0; and the halving max and sum of a vector's lanes.

import AttentionCore
import Foundation
import Testing

@Suite("vectorExp")
struct VectorExpTests {
    /// Error of `y` against exp(x) in units of the float32 spacing at exp(x).
    static func ulps(_ y: Float, _ x: Float) -> Double {
        let exact = exp(Double(x))
        return abs(Double(y) - exact) / Double(Float(exact).ulp)
    }

    /// Cephes' expf is about 1 ulp (measured worst 0.95 over the sweep); allow 2.
    static let maxUlps = 2.0

    static func evaluate(_ inputs: [Float]) -> [Float] {
        var outputs: [Float] = []
        outputs.reserveCapacity(inputs.count)
        var at = 0
        while at < inputs.count {
            var lanes = FloatVector(repeating: 0)
            let n = min(FloatVector.scalarCount, inputs.count - at)
            for i in 0 ..< n { lanes[i] = inputs[at + i] }
            let result = vectorExpScores(lanes)
            for i in 0 ..< n { outputs.append(result[i]) }
            at += n
        }
        return outputs
    }

    @Test("within a few ulp of exp over [-87.3, 0]")
    func sweep() {
        let count = 1 << 20
        let inputs = (0 ... count).map { -87.3 * Float($0) / Float(count) }
        let outputs = Self.evaluate(inputs)
        var worst = (ulps: 0.0, x: Float(0))
        for (x, y) in zip(inputs, outputs) {
            let error = Self.ulps(y, x)
            if !(error <= worst.ulps) { worst = (error, x) }  // NaN counts as worst
        }
        #expect(worst.ulps <= Self.maxUlps, "worst \(worst.ulps) ulp at x = \(worst.x)")
        // Also against Foundation's float exp: relative difference a few ulp.
        let relative = zip(inputs, outputs).map { x, y in Double(abs(y - Foundation.exp(x)) / Foundation.exp(x)) }.max() ?? .nan
        #expect(relative <= 2 * Self.maxUlps * Double(Float.ulpOfOne), "max relative difference to expf \(relative)")
    }

    @Test("within a few ulp for positive inputs", arguments: [Float(1e-6), 0.5, 1, 2, 7.25, 10, 33.3, 50, 80, 88])
    func positives(_ x: Float) {
        let y = Self.evaluate([x])[0]
        #expect(Self.ulps(y, x) <= Self.maxUlps, "exp(\(x)) = \(y), \(Self.ulps(y, x)) ulp off")
    }

    @Test("exactly 0 below float's range and for -inf")
    func underflow() {
        let inputs: [Float] = [-.infinity, -.greatestFiniteMagnitude, -1e30, -1000, -104, -88, -87.5, -87.34, (-87.33 as Float).nextDown]
        let outputs = Self.evaluate(inputs)
        for (x, y) in zip(inputs, outputs) {
            #expect(y == 0 && y.sign == .plus, "exp(\(x)) gave \(y)")
        }
    }

    @Test("exp(0) is exactly 1, in every lane")
    func zero() {
        #expect(vectorExpScores(FloatVector(repeating: 0)) == FloatVector(repeating: 1))
        #expect(vectorExpScores(FloatVector(repeating: -0.0)) == FloatVector(repeating: 1))
    }

    @Test("lanes are independent: -inf beside finite inputs")
    func mixedLanes() {
        var lanes = FloatVector(repeating: -.infinity)
        for i in stride(from: 0, to: FloatVector.scalarCount, by: 2) { lanes[i] = -Float(i) / 3 }
        let result = vectorExpScores(lanes)
        for i in 0 ..< FloatVector.scalarCount {
            if i % 2 == 0 {
                #expect(Self.ulps(result[i], lanes[i]) <= Self.maxUlps)
            } else {
                #expect(result[i] == 0)
            }
        }
    }

    /// vectorExpScores, the kernel's exp: the same accuracy over what the kernel feeds it (scores
    /// minus a running max that may lag by up to the recompute threshold, so [-87.3, 64]), and
    /// exactly 0 below float's range and for -inf (masked scores).
    @Test("the kernel's exp: within a few ulp over [-87.3, 64], 0 below, 1 at 0")
    func kernelExp() {
        let count = 1 << 20
        let inputs = (0 ... count).map { -87.3 + (87.3 + 64) * Float($0) / Float(count) } + [0, -0.0, 1, 88]
        let worst = Self.worst(of: vectorExpScores, over: inputs, ulps: Self.ulps)
        #expect(worst.ulps <= Self.maxUlps, "worst \(worst.ulps) ulp at x = \(worst.x)")
        #expect(vectorExpScores(FloatVector(repeating: 0)) == FloatVector(repeating: 1))
        var low = FloatVector(repeating: -.infinity)
        for (i, x) in [Float(-1e30), -1000, -104, -88, -87.5, -87.34, (-87.33 as Float).nextDown].enumerated() { low[i + 1] = x }
        #expect(vectorExpScores(low) == FloatVector(repeating: 0))
    }

    /// The largest error of `function` over `inputs`, 16 lanes at a time, and where (NaN counts as worst).
    static func worst(
        of function: (FloatVector) -> FloatVector, over inputs: [Float], ulps: (Float, Float) -> Double
    ) -> (ulps: Double, x: Float) {
        var worst = (ulps: 0.0, x: Float(0))
        var at = 0
        while at < inputs.count {
            var lanes = FloatVector(repeating: 0)
            let n = min(FloatVector.scalarCount, inputs.count - at)
            for i in 0 ..< n { lanes[i] = inputs[at + i] }
            let result = function(lanes)
            for i in 0 ..< n {
                let error = ulps(result[i], lanes[i])
                if !(error <= worst.ulps) { worst = (error, lanes[i]) }
            }
            at += n
        }
        return worst
    }

    /// Error of `y` against 2^x in units of the float32 spacing at 2^x.
    static func ulps2(_ y: Float, _ x: Float) -> Double {
        let exact = exp2(Double(x))
        return abs(Double(y) - exact) / Double(Float(exact).ulp)
    }

    /// vectorExp2Scores, the kernel's exp on base-2 scores: within 2 ulp over [-125, 92.4] (the
    /// recompute threshold), exactly 0 below -125 and for -inf, exactly 1 at 0, NaN kept.
    @Test("the kernel's exp2: within a few ulp over [-125, 92.4], 0 below, 1 at 0, NaN kept")
    func kernelExp2() {
        let count = 1 << 21
        let sweep = (0 ... count).map { -125 + (125 + 92.4) * Float($0) / Float(count) }
        let inputs = sweep + [0, -0.0, 0.5, -0.5, 1, -1, 0.49999997, -0.49999997, 127, -125]
        let worst = Self.worst(of: vectorExp2Scores, over: inputs, ulps: Self.ulps2)
        #expect(worst.ulps <= Self.maxUlps, "worst \(worst.ulps) ulp at x = \(worst.x)")
        #expect(vectorExp2Scores(FloatVector(repeating: 0)) == FloatVector(repeating: 1))
        for k in -125 ... 127 {  // whole powers of two are exact
            #expect(vectorExp2Scores(FloatVector(repeating: Float(k)))[0] == Float(sign: .plus, exponent: k, significand: 1))
        }
        var low = FloatVector(repeating: -.infinity)
        for (i, x) in [Float(-1e30), -1000, -200, -127, -126, -125.5, (-125 as Float).nextDown].enumerated() { low[i + 1] = x }
        #expect(vectorExp2Scores(low) == FloatVector(repeating: 0))
        var withNaN = FloatVector(repeating: 1)
        withNaN[3] = .nan
        withNaN[5] = Float(bitPattern: 0x7FC0_01FF)  // a NaN with payload bits where 2^n's exponent goes
        let result = vectorExp2Scores(withNaN)
        #expect(result[3].isNaN && result[5].isNaN && result[0] == 2)
    }

    @Test("horizontal max and sum over 16 lanes")
    func horizontal() {
        for seed in 0 ..< 64 {
            var lanes = FloatVector(repeating: 0)
            for i in 0 ..< FloatVector.scalarCount { lanes[i] = Float((i * 7 + seed * 13) % 23) - 11.5 }
            lanes[seed % 16] = seed % 3 == 0 ? -.infinity : lanes[seed % 16]
            #expect(horizontalMax(lanes) == lanes.max())
            let exact = (0 ..< 16).reduce(0.0) { $0 + Double(lanes[$1]) }
            if exact == -.infinity {
                #expect(horizontalSum(lanes) == -.infinity)
            } else {
                #expect(abs(Double(horizontalSum(lanes)) - exact) <= 1e-5 * max(1, abs(exact)))
            }
        }
        #expect(horizontalMax(FloatVector(repeating: -.infinity)) == -.infinity)
    }
}
