// Per-strategy options: each strategy reads its own option type out of `StrategyOptions`, an
// unset type reads as its defaults, and the descriptors name the types their strategies read.

import AttentionCore
import SequenceParallel
import Testing

@Suite("strategy options")
struct StrategyOptionsTests {
    @Test("an option type never set reads as its defaults")
    func defaults() {
        let options = StrategyOptions()
        #expect(options[MeshOptions.self].shape == nil)
        let star = options[StarOptions.self]
        #expect(star.queries == 1 && star.position == nil && !star.everyRank)
    }

    @Test("each strategy is made from its own options")
    func made() throws {
        var options = StrategyOptions(MeshOptions(shape: (2, 3)), StarOptions(queries: 7, position: 100, everyRank: true))
        let mesh = try #require(StrategyName.mesh.make(options, mask: .causal, ranks: 6, heads: 8) as? MeshAttention)
        #expect(mesh.label == "mesh 2x3")
        let star = try #require(StrategyName.star.make(options, mask: .causal, ranks: 2, heads: 8) as? StarAttention)
        #expect(star.queries == 7 && star.position == 100 && star.everyRank)
        options[MeshOptions.self].shape = (3, 2)
        #expect(options[MeshOptions.self].shape?.headGroup == 3)
        #expect(options[StarOptions.self].queries == 7, "setting one type leaves the others")
    }

    @Test("descriptors name the option types they read")
    func declared() {
        #expect(StrategyName.mesh.descriptor.optionsType == MeshOptions.self)
        #expect(StrategyName.star.descriptor.optionsType == StarOptions.self)
        #expect(StrategyName.zigzag.descriptor.optionsType == nil)
    }
}
