// verify's error measure: NaN is an infinite error wherever it appears, two -inf LSEs (a query
// that sees no key, on both sides) are no error, and folding ranks keeps the worst.

import AttentionJobs
import SequenceParallel
import Testing

@Suite struct VerificationTests {
    static func compare(_ actual: [Float], _ expected: [Double], lse: [Float] = [0], expectedLSE: [Double] = [0]) -> ResultErrors {
        ResultErrors.compare(
            actualOutput: actual, actualLSE: lse, actualRows: 1, rows: [0], positions: [7],
            expectedOutput: { expected[$0] }, expectedLSE: { expectedLSE[$0] }, heads: 1, headDim: actual.count)
    }

    @Test(arguments: [0, 1, 3])
    func nanAnywhereIsAnInfiniteError(at index: Int) {
        var actual: [Float] = [0.5, 0.25, -0.5, 1]
        actual[index] = .nan
        let errors = Self.compare(actual, [0.5, 0.25, -0.5, 1])
        #expect(errors.output.maxAbs == .infinity)
        #expect(errors.output.token == 7)
        #expect(Self.compare([1], [1], lse: [.nan], expectedLSE: [2]).lse.maxAbs == .infinity)
    }

    @Test func bothMinusInfinityIsNoErrorButOneSidedIs() {
        #expect(Self.compare([0], [0], lse: [-.infinity], expectedLSE: [-.infinity]).lse.maxAbs == 0)
        #expect(Self.compare([0], [0], lse: [-.infinity], expectedLSE: [1]).lse.maxAbs == .infinity)
    }

    @Test func absorbKeepsTheWorstIncludingNaN() {
        var total = Self.compare([1], [1]).output
        total.absorb(Self.compare([1.5], [1]).output)
        #expect(total.maxAbs == 0.5)
        var nan = ErrorStats()
        nan.maxAbs = .nan
        nan.token = 3
        total.absorb(nan)
        #expect(total.maxAbs.isNaN && total.token == 3, "a NaN rank must not be dropped from the total")
    }
}
