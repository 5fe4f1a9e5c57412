// AttentionShape: what it accepts, what it rejects (with a message a user can act on), the
// default scale, and the GQA head mapping of docs/DESIGN.md (query head h reads kv head h / (heads / kvHeads)).

import AttentionCore
import Foundation
import Testing

@Suite("Attention shape")
struct AttentionShapeTests {
    @Test(
        "heads not a multiple of kv heads is rejected, naming both",
        arguments: [(8, 3), (4, 8), (6, 4), (7, 2)])
    func notMultiple(heads: Int, kvHeads: Int) {
        let error = #expect(throws: AttentionShape.Invalid.headsNotMultipleOfKVHeads(heads: heads, kvHeads: kvHeads)) {
            try AttentionShape(heads: heads, kvHeads: kvHeads, headDim: 64)
        }
        let text = error?.description ?? ""
        #expect(text.contains("\(heads)") && text.contains("\(kvHeads)") && text.contains("multiple"), "\(text)")
    }

    @Test(
        "non-positive sizes are rejected, naming the field and the value",
        arguments: [
            (0, 1, 64, "heads", 0), (-4, 1, 64, "heads", -4), (8, 0, 64, "kv-heads", 0),
            (8, -2, 64, "kv-heads", -2), (8, 2, 0, "head-dim", 0), (8, 2, -1, "head-dim", -1),
        ])
    func nonPositive(heads: Int, kvHeads: Int, headDim: Int, field: String, value: Int) {
        // kv-heads 0 must be caught before heads % kvHeads is computed.
        let error = #expect(throws: AttentionShape.Invalid.nonPositive(field, value)) {
            try AttentionShape(heads: heads, kvHeads: kvHeads, headDim: headDim)
        }
        let text = error?.description ?? ""
        #expect(text.contains(field) && text.contains("\(value)"), "\(text)")
    }

    @Test("the default scale is 1/sqrt(headDim); an explicit scale is kept", arguments: [1, 32, 64, 80, 128, 256])
    func scale(headDim: Int) throws {
        let shape = try AttentionShape(heads: 4, kvHeads: 2, headDim: headDim)
        #expect(abs(Double(shape.scale) - 1 / Double(headDim).squareRoot()) <= Double(shape.scale.ulp))
        #expect(try AttentionShape(heads: 4, kvHeads: 2, headDim: headDim, scale: 0.3).scale == 0.3)
    }

    @Test("MHA, GQA and MQA head mapping and row widths", arguments: [(4, 4), (8, 2), (8, 1), (12, 3)])
    func headMapping(heads: Int, kvHeads: Int) throws {
        let shape = try AttentionShape(heads: heads, kvHeads: kvHeads, headDim: 80)
        #expect(shape.groupSize * kvHeads == heads)
        #expect(shape.queryRowWidth == heads * 80 && shape.kvRowWidth == kvHeads * 80)
        // Each kv head serves exactly groupSize consecutive query heads.
        let served = (0 ..< heads).map(shape.kvHead(of:))
        #expect(served == (0 ..< kvHeads).flatMap { [Int](repeating: $0, count: heads / kvHeads) })
        #expect(shape.description.contains("\(heads)") && shape.description.contains("\(kvHeads)"))
    }
}
