// Options shared by the subcommands, as ParsableArguments groups.

import ArgumentParser
import AttentionCore
import AttentionJobs
import FileFormats
import Planning
import Profiling
import SequenceParallel

extension StrategyName: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

/// --strategy: a registered strategy by name, or auto (the cost model's fastest prediction).
struct StrategyChoice: ExpressibleByArgument, Equatable {
    /// The named strategy; nil for auto, which `AutoStrategy.resolve` settles under MPI.
    let named: StrategyName?

    static let auto = StrategyChoice(named: nil)
    static let zigzag = StrategyChoice(named: .zigzag)

    init(named: StrategyName?) { self.named = named }

    init?(argument: String) {
        if argument == "auto" { self = .auto; return }
        guard let name = StrategyName(rawValue: argument) else { return nil }
        self.init(named: name)
    }

    var rawValue: String { named?.rawValue ?? "auto" }

    static var allValueStrings: [String] { StrategyName.allValueStrings + ["auto"] }

    static var help: String {
        StrategyName.allCases.map { "\($0.rawValue) (\($0.summary))" }.joined(separator: "; ")
            + "; auto (the fastest the cost model predicts among the strategies it models: probes the machine first unless --probe gives a probe's JSON)"
    }
}

/// --document-layout: how packed documents are laid over ranks.
enum DocumentLayoutChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, headTail = "head-tail", whole, mixed

    var layout: DocumentLayout? { DocumentLayout(rawValue: rawValue) }
}

extension ElementType: ExpressibleByArgument {}

/// The attention problem: inputs (synthetic or .npy), shape and mask.
struct ProblemOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Sequence length of the synthetic inputs (default 4099: not divisible by common rank counts).")
    var tokens: Int?
    @Option(parsing: .unconditional, help: "Query heads (default 8).")
    var heads: Int?
    @Option(name: .customLong("kv-heads"), parsing: .unconditional, help: "Key/value heads; heads must be a multiple (default 2: GQA).")
    var kvHeads: Int?
    @Option(name: .customLong("head-dim"), parsing: .unconditional, help: "Head dimension (default 64).")
    var headDim: Int?
    @Option(help: "Seed of the synthetic inputs; every world size sees the same values.")
    var seed: UInt64 = 1
    @Option(
        parsing: .unconditional,
        help:
            "Q as .npy, [tokens, heads, headDim]: float32 ('<f4'), float16 ('<f2') or, with --dtype bf16, bfloat16 (ml_dtypes' '<V2') (with --k and --v instead of synthetic inputs)."
    )
    var q: String?
    @Option(parsing: .unconditional, help: "K as .npy, [tokens, kvHeads, headDim], of Q's element type.")
    var k: String?
    @Option(parsing: .unconditional, help: "V as .npy, [tokens, kvHeads, headDim], of Q's element type.")
    var v: String?
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "Element type of the inputs and of O, dQ, dK, dV: \(ElementType.allCases.map(\.rawValue).joined(separator: ", ")) (default: the files' own type; f32 for synthetic inputs).",
            discussion:
                "Inputs of a wider type are rounded to it, to nearest even (synthetic ones too); bf16 is written as '<V2', as ml_dtypes reads it. LSE stays float32. bf16 multiplies in bf16 with float32 accumulation (oneDNN, forward and backward) where the CPU has bf16 "
                + "units (info says), else in float32 on the rounded values, as f16 does."
        ))
    var dtype: ElementType?
    @Flag(help: "Causal mask: query i sees keys j <= i (global positions).")
    var causal = false
    @Option(parsing: .unconditional, help: "Sliding window: causal, and query i sees only keys j with i - j < W.")
    var window: Int?
    @Option(name: .customLong("s2-block"), parsing: .unconditional, help: "S2 pattern: block size B (with --s2-local and --s2-stride; causal).")
    var s2Block: Int?
    @Option(name: .customLong("s2-local"), parsing: .unconditional, help: "S2 pattern: query block qb sees the L key blocks qb-L+1...qb.")
    var s2Local: Int?
    @Option(name: .customLong("s2-stride"), parsing: .unconditional, help: "S2 pattern: and every key block kb with (kb + head) % S == 0.")
    var s2Stride: Int?
    @Option(parsing: .unconditional, help: "Softmax scale (default 1/sqrt(head-dim)).")
    var scale: Float?
    @Option(
        name: .customLong("cu-seqlens"), parsing: .unconditional,
        help:
            "Packed documents as a 1-D int32 or int64 .npy [0, l1, l1+l2, ..., tokens] (FlashAttention's cu_seqlens): a query sees only keys of its own document (with --causal/--window as usual)."
    )
    var cuSeqlens: String?
    @Option(
        parsing: .unconditional,
        help: "Packed documents by their lengths, e.g. 100,2000,37 (0 allowed); they sum to the tokens, and --tokens defaults to their sum.")
    var documents: String?
    @Option(name: .customLong("random-documents"), parsing: .unconditional, help: "Packed documents: N lengths drawn from --seed (some of 0 to 3 tokens) that sum to the tokens.")
    var randomDocuments: Int?
    @Option(
        name: .customLong("mask-slices"), parsing: .unconditional,
        help: ArgumentHelp(
            "Any mask, as an int32 or int64 .npy of shape [n, 5]: one row (q_start, q_end, k_start, k_end, kind) per slice, half-open global ranges.",
            discussion:
                "With i = q - q_start, j = k - k_start and lq, lk the ranges' lengths, a slice shows key k to query q when both lie in its ranges and kind 0 (full): always; "
                + "1 (causal, bottom-right aligned): j <= i + lk - lq; 2 (inverse causal, top-left aligned): j >= i; 3 (bi-causal): both. A pair is visible when any slice shows it; slices may overlap. "
                + "seqpar mask draws a mask's block map and writes its slices."))
    var maskSlices: String?
    @Option(
        name: .customLong("prefix-lm"), parsing: .unconditional,
        help:
            "Prefix-LM mask: the first P tokens of each document (of the whole sequence without documents) see each other; every later token sees them and, causally, the tokens before it."
    )
    var prefixLM: Int?
    @Option(
        name: .customLong("shared-question"), parsing: .unconditional,
        help:
            "Shared-question mask from lengths P,A1,A2,...: a causal prompt of P tokens, then answers that each see the whole prompt and themselves (causal), never a sibling; the lengths sum to the tokens (--tokens defaults to their sum)."
    )
    var sharedQuestion: String?
    @Option(
        name: .customLong("block-causal"), parsing: .unconditional,
        help: "Block-causal mask: blocks of B tokens from each document's start; a token sees its whole block and every earlier block of its document.")
    var blockCausal: Int?
    @Option(
        name: .customLong("global-window"), parsing: .unconditional,
        help: "Global + window mask G,W: the first G tokens see every token and are seen by all; the others also see a causal sliding window of W tokens.")
    var globalWindow: String?

    /// The slice mask the options give (checked by `validate`).
    var slices: ProblemConfiguration.Slices? {
        if let maskSlices { return .file(path: maskSlices) }
        if let prefixLM { return .prefixLM(prefix: prefixLM) }
        if let lengths = sharedQuestion.flatMap(Self.documentLengths) { return .sharedQuestion(lengths: lengths) }
        if let blockCausal { return .blockCausal(block: blockCausal) }
        if let pair = globalWindow.flatMap(Self.documentLengths), pair.count == 2 { return .globalWindow(global: pair[0], window: pair[1]) }
        return nil
    }

    func validate() throws {
        for (option, path) in [("--q", q), ("--k", k), ("--v", v), ("--cu-seqlens", cuSeqlens), ("--mask-slices", maskSlices)] {
            try OutputCheck.notAnOption(path, option: option)
        }
        if let documents, documents.hasPrefix("--") {
            throw ValidationError("--documents needs lengths separated by commas, such as 100,2000,37, but got the option \(documents).")
        }
        let files = [q, k, v].compactMap { $0 }
        if !files.isEmpty {
            guard files.count == 3 else { throw ValidationError("--q, --k and --v go together: give all three .npy files, or none for synthetic inputs.") }
            guard tokens == nil, heads == nil, kvHeads == nil, headDim == nil else {
                throw ValidationError("--tokens, --heads, --kv-heads and --head-dim describe synthetic inputs; with --q/--k/--v the shapes come from the files.")
            }
        }
        if let tokens, tokens < 1 { throw ValidationError("--tokens must be at least 1 (got \(tokens)).") }
        for (option, value) in [("--heads", heads), ("--kv-heads", kvHeads), ("--head-dim", headDim)] {
            if let value, value > Self.dimensionLimit {
                throw ValidationError("\(option) must be at most \(Self.dimensionLimit) (got \(value)).")
            }
        }
        if let tokens {
            // Elements of one tensor, and their bytes, must be countable in 64 bits with room to spare.
            let width = (heads ?? 8) * (headDim ?? 64)
            let (elements, overflow) = tokens.multipliedReportingOverflow(by: width)
            if overflow || elements > Int.max / 64 {
                throw ValidationError(
                    "--tokens \(tokens) with \(heads ?? 8) heads of dimension \(headDim ?? 64) is more than any machine holds; expected at most \(Int.max / 64 / width) tokens at this shape."
                )
            }
        }
        if let scale, !(scale.isFinite && scale > 0) { throw ValidationError("--scale must be a positive number (got \(scale)).") }
        if let window, window < 1 { throw ValidationError("--window must be at least 1 (got \(window)).") }
        let s2 = [s2Block, s2Local, s2Stride].compactMap { $0 }
        if !s2.isEmpty {
            guard s2.count == 3 else { throw ValidationError("--s2-block, --s2-local and --s2-stride go together: give all three.") }
            guard window == nil else { throw ValidationError("--window and the S2 pattern are different masks: give one of them.") }
            do { _ = try S2Pattern(block: s2Block!, local: s2Local!, stride: s2Stride!) } catch { throw ValidationError("\(error).") }
        }
        if files.isEmpty {
            do { _ = try syntheticShape() } catch { throw ValidationError("\(error).") }
        }
        let documentOptions = [("--cu-seqlens", cuSeqlens != nil), ("--documents", documents != nil), ("--random-documents", randomDocuments != nil)]
            .filter(\.1).map(\.0)
        guard documentOptions.count <= 1 else {
            throw ValidationError("\(documentOptions.joined(separator: " and ")) each give the documents: give one of them.")
        }
        if !documentOptions.isEmpty, !s2.isEmpty {
            throw ValidationError("\(documentOptions[0]) and the S2 pattern do not combine: S2 is a mask of its own; use --causal or --window with documents.")
        }
        try validateSlices(documentOptions: documentOptions, s2: !s2.isEmpty, files: !files.isEmpty)
        if let randomDocuments, randomDocuments < 1 { throw ValidationError("--random-documents must be at least 1 (got \(randomDocuments)).") }
        if let randomDocuments, files.isEmpty, randomDocuments > ProblemConfiguration.randomDocumentLimit(tokens: tokens ?? Self.defaultTokens) {
            throw ValidationError(ProblemConfiguration.tooManyRandomDocuments(randomDocuments, tokens: tokens ?? Self.defaultTokens) + ".")
        }
        if let documents {
            guard let lengths = Self.documentLengths(documents) else {
                throw ValidationError("--documents takes lengths separated by commas, such as 100,2000,37 (got '\(documents)').")
            }
            let total = lengths.reduce(0, +)
            if let tokens, tokens != total {
                throw ValidationError("--documents lengths sum to \(total) but --tokens is \(tokens); they must agree (or leave --tokens out).")
            }
            if tokens == nil, files.isEmpty, total < 1 { throw ValidationError("--documents lengths sum to 0; a sequence has at least 1 token.") }
        }
    }

    /// The slice options: one at most, alone (no --causal, --window or S2), documents only with
    /// the families that work within them, parameters in range.
    private func validateSlices(documentOptions: [String], s2: Bool, files: Bool) throws {
        let given = [
            ("--mask-slices", maskSlices != nil), ("--prefix-lm", prefixLM != nil), ("--shared-question", sharedQuestion != nil),
            ("--block-causal", blockCausal != nil), ("--global-window", globalWindow != nil),
        ].filter(\.1).map(\.0)
        guard let option = given.first else { return }
        guard given.count == 1 else { throw ValidationError("\(given.joined(separator: " and ")) each give the whole mask: give one of them.") }
        let others = [("--causal", causal), ("--window", window != nil), ("the S2 pattern", s2)].filter(\.1).map(\.0)
        if let other = others.first {
            throw ValidationError("\(option) is a mask of its own and does not combine with \(other); write what you need as slices (--mask-slices) instead.")
        }
        if let documents = documentOptions.first, !slices!.takesDocuments {
            throw ValidationError(
                "\(option) does not work within packed documents (\(documents)); --prefix-lm and --block-causal do, or write the slices per document (--mask-slices).")
        }
        if let prefixLM, prefixLM < 0 { throw ValidationError("--prefix-lm must be 0 or more (got \(prefixLM)).") }
        if let blockCausal, blockCausal < 1 { throw ValidationError("--block-causal must be at least 1 (got \(blockCausal)).") }
        if let globalWindow {
            guard let pair = Self.documentLengths(globalWindow), pair.count == 2, pair[1] >= 1 else {
                throw ValidationError("--global-window takes G,W: G global tokens (0 or more) and a window of W >= 1 tokens, such as 64,1024 (got '\(globalWindow)').")
            }
        }
        if let sharedQuestion {
            guard let lengths = Self.documentLengths(sharedQuestion) else {
                throw ValidationError("--shared-question takes lengths separated by commas, the prompt's first, such as 512,256,256 (got '\(sharedQuestion)').")
            }
            let total = lengths.reduce(0, +)
            if let tokens, tokens != total {
                throw ValidationError("--shared-question lengths sum to \(total) but --tokens is \(tokens); they must agree (or leave --tokens out).")
            }
            if tokens == nil, !files, total < 1 { throw ValidationError("--shared-question lengths sum to 0; a sequence has at least 1 token.") }
        }
    }

    /// `--documents` as lengths: non-negative integers separated by commas; nil when malformed.
    static func documentLengths(_ text: String) -> [Int]? {
        let lengths = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !lengths.isEmpty, lengths.allSatisfy({ $0 != nil && $0! >= 0 && $0! <= 1 << 40 }) else { return nil }
        return lengths.map { $0! }
    }

    /// --tokens when neither it nor --documents gives the length (not divisible by common rank counts).
    static let defaultTokens = 4099

    /// The largest --heads, --kv-heads and --head-dim taken (products of these stay countable).
    static let dimensionLimit = 1 << 20

    /// The input files with the options that name them.
    var inputFiles: [(option: String, path: String)] {
        [("--q", q), ("--k", k), ("--v", v), ("--cu-seqlens", cuSeqlens), ("--mask-slices", maskSlices)].compactMap { option, path in
            path.map { (option: option, path: $0) }
        }
    }

    func syntheticShape() throws -> AttentionShape {
        try AttentionShape(heads: heads ?? 8, kvHeads: kvHeads ?? 2, headDim: headDim ?? 64, scale: scale)
    }

    /// The mask within a document (the whole mask without documents).
    var positionMask: AttentionMask {
        if let s2Block, let s2Local, let s2Stride { return .s2(try! S2Pattern(block: s2Block, local: s2Local, stride: s2Stride)) }  // validated
        if let window { return .window(window) }
        return causal ? .causal : .none
    }

    /// The mask, packed documents included, decided on every rank: a --cu-seqlens file that does
    /// not fit the sequence fails the run everywhere with what is wrong.
    func mask(_ communicator: Communicator) throws -> AttentionMask { try configuration.mask(communicator) }

    /// The problem as the library takes it.
    var configuration: ProblemConfiguration {
        var documents: ProblemConfiguration.Documents?
        if let cuSeqlens {
            documents = .cuSeqlens(path: cuSeqlens)
        } else if let lengths = self.documents.flatMap(Self.documentLengths) {
            documents = .lengths(lengths)  // validated
        } else if let randomDocuments {
            documents = .random(count: randomDocuments, seed: seed)
        }
        return ProblemConfiguration(source: source, positionMask: positionMask, documents: documents, slices: slices)
    }

    var source: InputSource {
        if let q, let k, let v { return .files(q: q, k: k, v: v, scale: scale, elementType: dtype) }
        let documentTokens = (documents ?? sharedQuestion).flatMap(Self.documentLengths).map { $0.reduce(0, +) }
        return .synthetic(
            seed: seed, tokens: tokens ?? documentTokens ?? Self.defaultTokens, shape: try! syntheticShape(), elementType: dtype)  // validated
    }
}

/// How each rank computes.
struct ComputeOptions: ParsableArguments {
    @Option(name: .customLong("strategy"), help: "How the work is split (default zigzag): \(StrategyChoice.help).")
    var strategyChoice: StrategyChoice?
    /// --strategy, zigzag when not given.
    var strategy: StrategyChoice { strategyChoice ?? .zigzag }
    @Option(
        parsing: .unconditional,
        help: "Probe figures (seqpar probe --out FILE) for the cost model behind --strategy auto and bench's predictions; without it the machine is probed first.")
    var probe: String?
    @Option(
        name: .customLong("kernel-efficiency"),
        help: "Cost model: the kernel's GFLOP/s as a fraction of sgemm's (default \(CostModel.defaultKernelEfficiency), measured on the development machine).")
    var kernelEfficiency: Double = CostModel.defaultKernelEfficiency
    @Option(
        help:
            "\(StrategyRegistry.ownersText(of: "--mesh")) only: Ph x Pr with Ph * Pr = ranks (heads all-to-all inside groups of Ph, ring across Pr); default: the largest Ph <= sqrt(ranks) dividing them."
    )
    var mesh: String?
    @Option(
        name: .customLong("queries"), parsing: .unconditional,
        help: "\(StrategyRegistry.ownersText(of: "--queries")) only: how many query tokens (the last ones of the sequence, or the rows of a --q file; default 1).")
    var queriesOption: Int?
    var queries: Int { queriesOption ?? 1 }
    @Option(
        name: .customLong("query-position"), parsing: .unconditional,
        help: "\(StrategyRegistry.ownersText(of: "--query-position")) only: global position of the first query (default: tokens - queries).")
    var queryPosition: Int?
    @Flag(name: .customLong("all"), help: "\(StrategyRegistry.ownersText(of: "--all")) only: every rank gets the merged result (MPI_Allreduce) instead of rank 0 (MPI_Reduce).")
    var everyRank = false
    @Option(
        name: .customLong("document-layout"),
        help:
            "Packed documents on ring, zigzag and mesh: auto (the layout with the lowest max/mean work over ranks: the strategy's own, per-document head-tail, whole documents, or mixed: the longest documents head-tail, the others whole), head-tail, whole, or mixed."
    )
    var documentLayout: DocumentLayoutChoice = .auto
    @Option(parsing: .unconditional, help: "Compute threads per rank, each with one-thread BLAS calls.")
    var threads: Int = 1
    @Option(
        name: .customLong("query-tile"), parsing: .unconditional,
        help:
            "Query rows per kernel tile (default \(KernelTiling.defaults(for: .none).queryTile) without a mask, \(KernelTiling.defaults(for: .causal).queryTile) with one; the scores and probabilities of a tile and a key block take 1.5 MiB at 384 x 512)."
    )
    var queryTile: Int?
    @Option(name: .customLong("key-block"), parsing: .unconditional, help: "Keys per kernel block (default \(KernelTiling().keyBlock)).")
    var keyBlock: Int?
    @Option(
        parsing: .unconditional,
        help:
            "End the job when it has run this many seconds: every rank still able to act says what (and which rank) it was waiting for, and the job exits with status 124 (default \(Int(Self.defaultTimeout)) s = 24 hours; 0: no limit)."
    )
    var timeout: Double = Self.defaultTimeout

    static let defaultTimeout: Double = 86_400

    func validate() throws {
        try OutputCheck.notAnOption(probe, option: "--probe")
        guard kernelEfficiency > 0, kernelEfficiency <= 1 else { throw ValidationError("--kernel-efficiency is a fraction in (0, 1] (got \(kernelEfficiency)).") }
        guard (1 ... 4096).contains(threads) else { throw ValidationError("--threads must be between 1 and 4096 (got \(threads)).") }
        for (flag, value) in [("--query-tile", queryTile), ("--key-block", keyBlock)] {
            if let value, !(1 ... 1 << 16).contains(value) { throw ValidationError("\(flag) must be between 1 and 65536 (got \(value)).") }
        }
        guard timeout.isFinite, timeout >= 0 else { throw ValidationError("--timeout takes seconds, 0 or more (got \(timeout)).") }
        if let mesh, MeshShape(parsing: mesh) == nil {
            throw ValidationError("--mesh takes PhxPr, two numbers from 1 to \(MeshShape.limit) such as 2x2 (got '\(mesh)').")
        }
        guard queries >= 1 else { throw ValidationError("--queries must be at least 1 (got \(queries)).") }
        guard queries <= 1 << 40 else { throw ValidationError("--queries \(queries) is more than any sequence holds; expected at most 2^40.") }
        if let queryPosition, !(0 ... 1 << 40).contains(queryPosition) {
            throw ValidationError("--query-position must be from 0 to 2^40, a position in the sequence (got \(queryPosition)).")
        }
    }

    /// The strategy options given on the command line (those a strategy's descriptor lists).
    var givenStrategyOptions: [String] {
        [("--mesh", mesh != nil), ("--queries", queriesOption != nil), ("--query-position", queryPosition != nil), ("--all", everyRank)].filter(\.1).map(\.0)
    }

    /// Refuses a strategy option none of `strategies` reads (`--mesh 2x2 --strategy ring`); auto
    /// (nil) may pick any strategy, so it takes them all.
    func refuseForeignOptions(_ strategies: [StrategyName]?) throws {
        guard let strategies else { return }
        do { try StrategyRegistry.refuseForeign(options: givenStrategyOptions, strategies: strategies) } catch { throw ValidationError("\(error).") }
    }

    /// How each rank computes, as the library takes it.
    var configuration: ComputeConfiguration {
        ComputeConfiguration(
            strategy: strategy.named, strategyOptions: strategyOptions, threads: threads, queryTile: queryTile, keyBlock: keyBlock, documentLayout: documentLayout.layout,
            probe: probe, kernelEfficiency: kernelEfficiency)
    }

    var strategyOptions: StrategyOptions {
        StrategyOptions(
            MeshOptions(shape: mesh.flatMap(MeshShape.init(parsing:))), StarOptions(queries: queries, position: queryPosition, everyRank: everyRank))
    }

}

struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the figures as one JSON object (rank 0), for scripts.")
    var json = false
    @Flag(help: "No progress on stderr (shown by rank 0 when stderr is a terminal: what runs, then the share done and the time left).")
    var quiet = false

    /// Turns rank 0's progress on when wanted; the commands that compute call it first.
    func setProgress() { DistributedRun.showsProgress = !quiet && ProgressMeter.wanted }
}
