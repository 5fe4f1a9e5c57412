// The plain values a job is described by: the problem (inputs, mask, packed documents) and how
// each rank computes (strategy, its options, threads, tiling, the cost model's inputs). The
// command line fills them from its options; a Swift program fills them directly.

import AttentionCore
import Foundation
import Planning
import SequenceParallel

/// The attention problem: where Q, K and V come from and which keys each query sees.
public struct ProblemConfiguration: Sendable {
    /// Synthetic inputs (seed, tokens, shape) or three `.npy` files.
    public var source: InputSource
    /// The mask within a document (the whole mask when there are no packed documents).
    public var positionMask: AttentionMask
    /// Packed documents, when the sequence holds several.
    public var documents: Documents?
    /// A mask given as slices (a file, or a family built from its parameters); it replaces
    /// `positionMask`, and the families that take documents work within `documents`.
    public var slices: Slices?

    /// Where a slice mask comes from (`MaskSlices`).
    public enum Slices: Sendable {
        /// An int32 or int64 `.npy` of shape [n, 5], rows (q_start, q_end, k_start, k_end, kind).
        case file(path: String)
        /// The first `prefix` tokens of each document bidirectional, causal after them.
        case prefixLM(prefix: Int)
        /// A causal prompt of `lengths[0]` tokens and answers of the other lengths, each seeing
        /// the prompt and itself; the lengths sum to the tokens.
        case sharedQuestion(lengths: [Int])
        /// Blocks of `block` tokens per document, each seeing itself and every earlier block.
        case blockCausal(block: Int)
        /// `global` first tokens that see and are seen by all, a causal window of `window` for the rest.
        case globalWindow(global: Int, window: Int)

        /// Whether the family works within packed documents.
        public var takesDocuments: Bool {
            switch self {
            case .prefixLM, .blockCausal: return true
            case .file, .sharedQuestion, .globalWindow: return false
            }
        }
    }

    /// Where the document boundaries of a packed sequence come from.
    public enum Documents: Sendable {
        /// A 1-D int32 or int64 `.npy` of cumulative lengths `[0, l1, l1+l2, ..., tokens]`.
        case cuSeqlens(path: String)
        /// The documents' lengths, summing to the tokens.
        case lengths([Int])
        /// `count` lengths drawn from `seed` that sum to the tokens.
        case random(count: Int, seed: UInt64)
    }

    public init(source: InputSource, positionMask: AttentionMask = .none, documents: Documents? = nil, slices: Slices? = nil) {
        self.source = source
        self.positionMask = positionMask
        self.documents = documents
        self.slices = slices
    }

    /// The mask, packed documents included. Reads the sequence length from `source` (the K file's
    /// header for file inputs) and, for `.cuSeqlens`, the boundaries file.
    /// - Throws: the file's error, or `DocumentBoundaries`' when the documents do not fit the sequence.
    public func mask() throws -> AttentionMask {
        guard documents != nil || slices != nil else { return positionMask }
        let tokens = try source.dimensions(selfAttention: false).tokens
        let boundaries = try documentBoundaries(tokens: tokens)
        guard let slices else { return .documents(boundaries!, within: positionMask) }
        let documents = try boundaries ?? DocumentBoundaries(offsets: [0, tokens], tokens: tokens)
        switch slices {
        case let .file(path): return .slices(try MaskSlices.load(path, tokens: tokens))
        case let .prefixLM(prefix): return .slices(.prefixLM(prefix: prefix, documents: documents))
        case let .blockCausal(block): return .slices(.blockCausal(block: block, documents: documents))
        case let .globalWindow(global, window): return .slices(.globalWindow(global: global, window: window, tokens: tokens))
        case let .sharedQuestion(lengths):
            let total = lengths.reduce(0, +)
            guard total == tokens else {
                throw MaskSlices.Invalid(
                    description: "--shared-question: the lengths sum to \(total) but the sequence has \(tokens) tokens; the prompt and answers must cover it")
            }
            return .slices(.sharedQuestion(lengths: lengths))
        }
    }

    private func documentBoundaries(tokens: Int) throws -> DocumentBoundaries? {
        guard let documents else { return nil }
        let boundaries: DocumentBoundaries
        switch documents {
        case let .cuSeqlens(path): boundaries = try DocumentBoundaries.load(path, tokens: tokens)
        case let .lengths(lengths): boundaries = try DocumentBoundaries(lengths: lengths, tokens: tokens)
        case let .random(count, seed):
            guard count <= Self.randomDocumentLimit(tokens: tokens) else {
                throw DocumentBoundaries.Invalid(description: Self.tooManyRandomDocuments(count, tokens: tokens))
            }
            boundaries = DocumentBoundaries.random(count: count, tokens: tokens, seed: seed)
        }
        return boundaries
    }

    /// The most random documents a sequence of `tokens` tokens takes: one per token (at least one).
    public static func randomDocumentLimit(tokens: Int) -> Int { max(tokens, 1) }

    public static func tooManyRandomDocuments(_ count: Int, tokens: Int) -> String {
        "--random-documents \(count) asks for more documents than the sequence's \(tokens) tokens; "
            + "give at most \(randomDocumentLimit(tokens: tokens)) (one document per token)"
    }

    /// `mask()` decided on every rank of `communicator`: a boundaries file that does not fit the
    /// sequence fails every rank with what is wrong (`CollectiveFailure`).
    public func mask(_ communicator: Communicator) throws -> AttentionMask {
        try communicator.together { try mask() }
    }
}

/// How each rank computes: the strategy (or auto), its options, threads and kernel tiling, the
/// layout of packed documents, and the cost model's inputs for auto.
public struct ComputeConfiguration: Sendable {
    /// The strategy to run; nil for auto (the cost model's fastest prediction, `AutoStrategy.resolve`).
    public var strategy: StrategyName?
    /// What some strategies read (mesh's shape, star's queries).
    public var strategyOptions: StrategyOptions
    /// Compute threads per rank.
    public var threads: Int
    /// Query rows per kernel tile and keys per kernel block; nil for the kernel's default for the
    /// mask (`KernelTiling.defaults(for:)`), each on its own.
    public var queryTile: Int?
    public var keyBlock: Int?
    /// How packed documents are laid over ranks; nil picks the layout with the lowest max/mean work.
    public var documentLayout: DocumentLayout?
    /// A probe's JSON (`seqpar probe --out FILE`) for the cost model; nil measures the machine first.
    public var probe: String?
    /// The kernel's GFLOP/s as a fraction of sgemm's, for the cost model.
    public var kernelEfficiency: Double

    public init(
        strategy: StrategyName? = .zigzag, strategyOptions: StrategyOptions = StrategyOptions(), threads: Int = 1,
        queryTile: Int? = nil, keyBlock: Int? = nil, documentLayout: DocumentLayout? = nil, probe: String? = nil,
        kernelEfficiency: Double = CostModel.defaultKernelEfficiency
    ) {
        self.strategy = strategy
        self.strategyOptions = strategyOptions
        self.threads = threads
        self.queryTile = queryTile
        self.keyBlock = keyBlock
        self.documentLayout = documentLayout
        self.probe = probe
        self.kernelEfficiency = kernelEfficiency
    }

    /// The kernel's tiles for `mask`: the ones given, the mask's defaults for the others.
    public func tiling(for mask: AttentionMask) -> KernelTiling {
        let defaults = KernelTiling.defaults(for: mask)
        return KernelTiling(queryTile: queryTile ?? defaults.queryTile, keyBlock: keyBlock ?? defaults.keyBlock)
    }
}
