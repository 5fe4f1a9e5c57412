// The strategies the tool offers, each described once: its name, one line for --help, the
// options it reads, how it shards, how it is made, and what the cost model predicts for it.
// The command line's choices, the cluster config's check, --strategy auto and bench's
// predictions all derive from `StrategyRegistry.all`. A new strategy is one file (the type, its
// `descriptor`) and one line in `all`.

import AttentionCore
import MPIBinding
import Planning
import Profiling

/// A strategy's name, as users type it. Only registered names can be made (`init?(rawValue:)`).
public struct StrategyName: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// A registered strategy's name; nil for any other text.
    public init?(rawValue: String) {
        guard StrategyRegistry.all.contains(where: { $0.name.rawValue == rawValue }) else { return nil }
        self.rawValue = rawValue
    }

    /// For descriptors, which declare their own name.
    public init(declaring rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }

    /// Every registered name, in registration order.
    public static var allCases: [StrategyName] { StrategyRegistry.all.map(\.name) }

    public var descriptor: StrategyDescriptor { StrategyRegistry.all.first { $0.name == self }! }
    public var summary: String { descriptor.summary }

    public static let ring = RingAttention.descriptor.name
    public static let zigzag = ZigzagAttention.descriptor.name
    public static let heads = HeadsAttention.descriptor.name
    public static let mesh = MeshAttention.descriptor.name
    public static let s2 = S2Attention.descriptor.name
    public static let star = StarAttention.descriptor.name
}

/// What a strategy is made for: the problem's mask, the world and head counts, the options (each
/// strategy reads its own type's: `options[MeshOptions.self]`).
public struct StrategyRequest: Sendable {
    public var mask: AttentionMask
    public var ranks: Int
    public var heads: Int
    public var options: StrategyOptions

    public init(mask: AttentionMask, ranks: Int, heads: Int, options: StrategyOptions = StrategyOptions()) {
        self.mask = mask
        self.ranks = ranks
        self.heads = heads
        self.options = options
    }
}

/// One strategy as the tool offers it.
public struct StrategyDescriptor: Sendable {
    public let name: StrategyName
    /// One line for --help.
    public let summary: String
    /// The command-line options only it reads (beyond the common ones and the masks every
    /// strategy takes); giving one with another strategy is refused (`StrategyRegistry.refuseForeign`).
    public let options: [String]
    /// The type those options fill (its own, declared in its file), which `make` reads from
    /// `StrategyRequest.options`; nil when it takes none.
    public let optionsType: (any StrategyOptionSet.Type)?
    /// Sets the options for one of its variants the cost model predicted (`Prediction.variant`,
    /// such as mesh's "2x2"); nil when it has none.
    public let applyVariant: (@Sendable (inout StrategyOptions, String) -> Void)?
    /// Whether it computes gradients (its strategy's `backwardRefusal` is nil exactly then).
    public let computesGradients: Bool
    /// Makes the strategy for a problem (checked afterwards with `check`).
    public let make: @Sendable (StrategyRequest) -> SequenceParallelStrategy
    /// The cost model's predictions of its variants for a problem (none: not modelled, so
    /// --strategy auto never picks it).
    public let predictions: @Sendable (CostModel, AttentionProblem) -> [Prediction]

    public init(
        name: String, summary: String, options: [String] = [], optionsType: (any StrategyOptionSet.Type)? = nil,
        applyVariant: (@Sendable (inout StrategyOptions, String) -> Void)? = nil, computesGradients: Bool = true,
        make: @escaping @Sendable (StrategyRequest) -> SequenceParallelStrategy,
        predictions: @escaping @Sendable (CostModel, AttentionProblem) -> [Prediction] = { _, _ in [] }
    ) {
        self.name = StrategyName(declaring: name)
        self.summary = summary
        self.options = options
        self.optionsType = optionsType
        self.applyVariant = applyVariant
        self.computesGradients = computesGradients
        self.make = make
        self.predictions = predictions
    }
}

/// The strategies the tool offers, by their descriptors, and the cost model's predictions over all of them.
public enum StrategyRegistry {
    /// Every strategy, in the order --help lists them.
    public static let all: [StrategyDescriptor] = [
        RingAttention.descriptor,
        ZigzagAttention.descriptor,
        HeadsAttention.descriptor,
        MeshAttention.descriptor,
        S2Attention.descriptor,
        StarAttention.descriptor,
    ]

    /// The strategies that read `option` (one of their `options`).
    public static func owners(of option: String) -> [StrategyName] { all.filter { $0.options.contains(option) }.map(\.name) }

    /// "mesh", "ring or zigzag": the owners of `option` for help texts.
    public static func ownersText(of option: String) -> String { names(owners(of: option)) }

    /// Names joined as a sentence says them: "ring, zigzag or heads".
    public static func names(_ names: [StrategyName]) -> String {
        let words = names.map(\.rawValue)
        return words.count < 2 ? words.joined() : words.dropLast().joined(separator: ", ") + " or " + words.last!
    }

    /// The strategies that compute gradients (those without a `backwardRefusal`).
    public static var withBackward: [StrategyName] { all.filter { $0.computesGradients }.map(\.name) }

    /// Refuses options given on the command line that none of `strategies` reads, naming the
    /// strategy they belong to.
    public static func refuseForeign(options given: [String], strategies: [StrategyName]) throws {
        for option in given {
            let owners = owners(of: option)
            guard !owners.isEmpty, !owners.contains(where: strategies.contains) else { continue }
            let chosen = strategies.count == 1 ? "--strategy \(strategies[0])" : "the strategies \(names(strategies))"
            throw StrategyRefusal(
                description: "\(option) is an option of \(names(owners)) only, and \(chosen) would ignore it; give --strategy \(owners[0]) or leave \(option) out")
        }
    }

    /// Every modelled strategy's predictions for a problem, fastest first.
    public static func predictions(_ model: CostModel, _ problem: AttentionProblem) -> [Prediction] {
        all.flatMap { $0.predictions(model, problem) }.sorted { $0.seconds < $1.seconds }
    }
}

extension StrategyName {
    /// Makes this strategy for a problem.
    public func make(_ options: StrategyOptions, mask: AttentionMask, ranks: Int, heads: Int) -> SequenceParallelStrategy {
        descriptor.make(StrategyRequest(mask: mask, ranks: ranks, heads: heads, options: options))
    }
}
