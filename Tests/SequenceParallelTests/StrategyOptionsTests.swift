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
        var options = StrategyOptions(MeshOptions(shape: MeshShape(headGroup: 2, ring: 3)), StarOptions(queries: 7, position: 100, everyRank: true))
        let mesh = try #require(StrategyName.mesh.make(options, mask: .causal, ranks: 6, heads: 8) as? MeshAttention)
        #expect(mesh.label == "mesh 2x3")
        let star = try #require(StrategyName.star.make(options, mask: .causal, ranks: 2, heads: 8) as? StarAttention)
        #expect(star.queries == 7 && star.position == 100 && star.everyRank)
        options[MeshOptions.self].shape = MeshShape(headGroup: 3, ring: 2)
        #expect(options[MeshOptions.self].shape?.headGroup == 3)
        #expect(options[StarOptions.self].queries == 7, "setting one type leaves the others")
    }

    @Test("descriptors name the option types they read")
    func declared() {
        #expect(StrategyName.mesh.descriptor.optionsType == MeshOptions.self)
        #expect(StrategyName.star.descriptor.optionsType == StarOptions.self)
        #expect(StrategyName.zigzag.descriptor.optionsType == nil)
    }

    @Test("an option of one strategy given with another is refused, naming the strategy it belongs to")
    func foreignOptions() throws {
        #expect(StrategyRegistry.owners(of: "--mesh") == [.mesh])
        #expect(StrategyRegistry.owners(of: "--queries") == [.star])
        #expect(StrategyRegistry.owners(of: "--s2-block").isEmpty, "the S2 pattern is a mask every strategy takes")
        #expect(throws: Never.self) { try StrategyRegistry.refuseForeign(options: ["--mesh"], strategies: [.mesh]) }
        #expect(throws: Never.self) { try StrategyRegistry.refuseForeign(options: ["--mesh"], strategies: [.ring, .mesh]) }
        do {
            try StrategyRegistry.refuseForeign(options: ["--mesh"], strategies: [.ring])
            Issue.record("--mesh with ring was accepted")
        } catch {
            #expect("\(error)" == "--mesh is an option of mesh only, and --strategy ring would ignore it; give --strategy mesh or leave --mesh out")
        }
        #expect(throws: StrategyRefusal.self) { try StrategyRegistry.refuseForeign(options: ["--all"], strategies: [.ring, .zigzag]) }
    }

    @Test("a predicted variant goes back into the strategy's options through its descriptor")
    func variants() throws {
        var options = StrategyOptions()
        try #require(StrategyName.mesh.descriptor.applyVariant != nil)
        StrategyName.mesh.descriptor.applyVariant?(&options, "2x4")
        #expect(options[MeshOptions.self].shape == MeshShape(headGroup: 2, ring: 4))
        #expect(MeshShape(parsing: "4294967296x4294967296") == nil && MeshShape(parsing: "2x") == nil && MeshShape(parsing: "0x4") == nil)
        #expect(MeshShape(parsing: "3X5")?.description == "3x5")
    }

    @Test("the strategies with a backward are those without a refusal, and star's refusal names them")
    func backwardNames() {
        #expect(StrategyRegistry.withBackward == [.ring, .zigzag, .heads, .mesh, .s2])
        for descriptor in StrategyRegistry.all {
            let made = descriptor.make(StrategyRequest(mask: .none, ranks: 2, heads: 2))
            #expect((made.backwardRefusal == nil) == descriptor.computesGradients, "\(descriptor.name) says otherwise than its strategy")
        }
        let star = StrategyName.star.make(StrategyOptions(), mask: .none, ranks: 2, heads: 2)
        #expect(star.backwardRefusal?.contains("use ring, zigzag, heads, mesh or s2 with --backward") == true)
    }
}
