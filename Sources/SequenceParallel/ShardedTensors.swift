// One rank's rows of Q, K, V: generated from a seed or read from .npy files, each rank touching
// only its own rows, and refused when they hold NaN or infinity; and the writing of O and LSE,
// each rank writing its own rows at their offsets into files rank 0 created (OutputFiles.swift),
// never gathering a whole tensor on one rank.

import AttentionCore
import Buffers
import FileFormats
import MPIBinding

/// Where the inputs come from, and in which element type the job holds them.
public struct InputSource: Sendable {
    public enum Origin: Sendable {
        /// Deterministic values from `seed` for a sequence of `tokens` tokens.
        case synthetic(seed: UInt64, tokens: Int, shape: AttentionShape)
        /// .npy files; `scale` nil means 1/sqrt(headDim).
        case files(q: String, k: String, v: String, scale: Float?)
    }

    public var origin: Origin
    /// `--dtype`: the element type asked for; nil takes the files' own (f32 for synthetic inputs).
    /// Inputs of a wider type are rounded to it (to nearest even) as they are read or made.
    public var requestedElementType: ElementType?

    public init(_ origin: Origin, elementType: ElementType? = nil) {
        self.origin = origin
        requestedElementType = elementType
    }

    public static func synthetic(seed: UInt64, tokens: Int, shape: AttentionShape, elementType: ElementType? = nil) -> InputSource {
        InputSource(.synthetic(seed: seed, tokens: tokens, shape: shape), elementType: elementType)
    }

    public static func files(q: String, k: String, v: String, scale: Float?, elementType: ElementType? = nil) -> InputSource {
        InputSource(.files(q: q, k: k, v: v, scale: scale), elementType: elementType)
    }

    /// Files are read as bf16 when their descr does not say (`<V2`) only if bf16 was asked for.
    var readsBF16: Bool { requestedElementType == .bf16 }

    /// Opens one input file (for its header or rows).
    public func open(_ path: String) throws -> NpyFile { try NpyFile.open(reading: path, readingBF16: readsBF16) }

    /// The job's element type: `--dtype`, else the files' own type, which Q, K and V must share
    /// (f32 for synthetic inputs).
    /// - Throws: `InputFiles.ShapeMismatch` naming the files whose types differ; a file's own error.
    public func elementType() throws -> ElementType {
        guard case let .files(q, k, v, _) = origin else { return requestedElementType ?? .f32 }
        return try elementType(q: open(q), k: open(k), v: open(v))
    }

    /// The job's element type for these opened input files (as `elementType()`).
    func elementType(q: NpyFile, k: NpyFile, v: NpyFile) throws -> ElementType {
        let files = [("Q", q), ("K", k), ("V", v)]
        let types = files.map { $0.1.elementType! }
        if requestedElementType == nil, let other = types.firstIndex(where: { $0 != types[0] }) {
            throw InputFiles.ShapeMismatch(
                description: "Q \(q.path) holds \(types[0].longName) but \(files[other].0) \(files[other].1.path) holds \(types[other].longName); "
                    + "Q, K and V must share one element type (or pass --dtype to convert them all to one)")
        }
        return requestedElementType ?? types[0]
    }

    /// Sequence length and shape, from the headers for files (each file checked as `load` does).
    public func dimensions(selfAttention: Bool) throws -> (tokens: Int, shape: AttentionShape) {
        switch origin {
        case let .synthetic(_, tokens, shape): return (tokens, shape)
        case let .files(q, k, v, scale):
            let (qf, kf, vf) = (try open(q), try open(k), try open(v))
            return (kf.header.shape.first ?? 0, try InputFiles.shape(q: qf, k: kf, v: vf, scale: scale, selfAttention: selfAttention))
        }
    }

    /// Query heads, read from the Q header for files (a malformed file is reported by `load`).
    public func heads() throws -> Int {
        switch origin {
        case let .synthetic(_, _, shape): return shape.heads
        case let .files(q, _, _, _):
            let shape = try open(q).header.shape
            return shape.count == 3 ? max(1, shape[1]) : 1
        }
    }
}

/// Which queries a rank holds.
public enum QuerySelection: Equatable, Sendable {
    /// Self-attention: the same rows as its keys.
    case sameAsKeys
    /// `count` query tokens at global positions `position ..< position + count`, held by rank 0
    /// (from the sequence's own Q, or from the Q file when it holds just those rows); star
    /// broadcasts them. `position` nil: the last `count` tokens.
    case root(count: Int, position: Int?)
}

/// A rank's shard: rows of Q (`[queryRows, heads, headDim]`) and of K and V stored back to back
/// in one buffer (`[keyRows, kvHeads, headDim]` each), the form in which K/V travel between ranks,
/// held in the job's element type (bf16/f16 jobs in 16 bits: half of float32's memory).
public final class LocalShard {
    public let shape: AttentionShape
    /// Sequence length (of the keys).
    public let tokens: Int
    public let partition: TokenPartition
    public let rank: Int
    public let querySegments: [ShardSegment]
    public let keySegments: [ShardSegment]
    /// The element type the inputs are held in, and the outputs are written in (`--dtype`).
    public var elementType: ElementType { queryStorage.elementType }
    /// Q, and K rows then V rows, in `elementType`.
    public let queryStorage: ElementStorage, keyValueStorage: ElementStorage

    public var queryRows: Int { Self.rows(querySegments) }
    public var keyRows: Int { Self.rows(keySegments) }

    public static func rows(_ segments: [ShardSegment]) -> Int { segments.last.map { $0.localRow + $0.positions.count } ?? 0 }

    public init(shape: AttentionShape, partition: TokenPartition, rank: Int, querySegments: [ShardSegment]? = nil, elementType: ElementType = .f32) {
        self.shape = shape
        self.tokens = partition.tokens
        self.partition = partition
        self.rank = rank
        keySegments = partition.stackedSegments(of: rank)
        self.querySegments = querySegments ?? keySegments
        queryStorage = ElementStorage(zeroed: Self.rows(self.querySegments) * shape.queryRowWidth, elementType: elementType)
        keyValueStorage = ElementStorage(zeroed: 2 * Self.rows(keySegments) * shape.kvRowWidth, elementType: elementType)
    }

    /// Q as the kernels read it.
    public var queryElements: ElementRows { queryStorage.rows }
    /// K then V as the kernels read them.
    public var keyValueElements: KeyValueRows { KeyValueRows(keyValueStorage.rows, valuesOffset: keyRows * shape.kvRowWidth) }

    /// Q, K and V widened to float32 (for checks and single-rank references; copies).
    public func widenedQueries() -> [Float] { queryStorage.widened(0 ..< queryRows * shape.queryRowWidth) }
    public func widenedKeyValues() -> (keys: [Float], values: [Float]) {
        let count = keyRows * shape.kvRowWidth
        return (keyValueStorage.widened(0 ..< count), keyValueStorage.widened(count ..< 2 * count))
    }

    /// Loads this rank's rows. Throws (on this rank only) with a message naming the file.
    /// With packed documents in `balancing`, the rows are laid out as `TokenPartition.balanced`
    /// picks (only `documentLayout` when given).
    public static func load(
        _ source: InputSource, layout: TokenLayout, rank: Int, ranks: Int, groupSize: Int = 1,
        queries selection: QuerySelection = .sameAsKeys, balancing mask: AttentionMask = .none,
        documentLayout: DocumentLayout? = nil, tiling: KernelTiling = KernelTiling()
    ) throws -> LocalShard {
        func partition(_ tokens: Int) -> TokenPartition {
            TokenPartition.balanced(
                tokens: tokens, ranks: ranks, layout: layout, groupSize: groupSize, mask: mask,
                documentLayout: documentLayout, tiling: tiling)
        }
        switch source.origin {
        case let .synthetic(seed, tokens, shape):
            let partition = partition(tokens)
            let shard = LocalShard(
                shape: shape, partition: partition, rank: rank,
                querySegments: try querySegments(selection, tokens: tokens, rank: rank, fileRows: nil),
                elementType: source.requestedElementType ?? .f32)
            shard.fillSynthetic(seed: seed, queries: rank == 0 || selection == .sameAsKeys)
            try shard.checkFinite(q: "synthetic", k: "synthetic", v: "synthetic")
            return shard
        case let .files(qPath, kPath, vPath, scale):
            let (q, k, v) = (try source.open(qPath), try source.open(kPath), try source.open(vPath))
            let elementType = try source.elementType(q: q, k: k, v: v)
            let shape = try InputFiles.shape(q: q, k: k, v: v, scale: scale, selfAttention: selection == .sameAsKeys)
            let tokens = k.header.shape[0]
            let partition = partition(tokens)
            let shard = LocalShard(
                shape: shape, partition: partition, rank: rank,
                querySegments: try querySegments(selection, tokens: tokens, rank: rank, fileRows: q.header.shape[0]), elementType: elementType)
            // A Q file of the whole sequence is indexed by position; a Q file of just the star
            // queries by row.
            let queryOrigin = q.header.shape[0] == tokens ? 0 : shard.querySegments.first?.positions.lowerBound ?? 0
            for segment in shard.querySegments where selection == .sameAsKeys || rank == 0 {
                try read(
                    q, into: shard.queryStorage, at: segment.localRow * shape.queryRowWidth,
                    elementOffset: (segment.positions.lowerBound - queryOrigin) * shape.queryRowWidth,
                    count: segment.positions.count * shape.queryRowWidth)
            }
            let valuesOffset = shard.keyRows * shape.kvRowWidth
            for segment in shard.keySegments {
                let (at, from, count) = (
                    segment.localRow * shape.kvRowWidth, segment.positions.lowerBound * shape.kvRowWidth,
                    segment.positions.count * shape.kvRowWidth
                )
                try read(k, into: shard.keyValueStorage, at: at, elementOffset: from, count: count)
                try read(v, into: shard.keyValueStorage, at: valuesOffset + at, elementOffset: from, count: count)
            }
            try shard.checkFinite(q: qPath, k: kPath, v: vPath)
            return shard
        }
    }

    /// Reads `count` elements of `file` from `elementOffset` into `storage` at `at`: as they are
    /// when the file holds the storage's type or the storage is f32 (widened), else through
    /// float32 and rounded to nearest even.
    static func read(_ file: NpyFile, into storage: ElementStorage, at: Int, elementOffset: Int, count: Int) throws {
        let type = storage.elementType
        if type == .f32 { return try file.read(into: storage.floats.baseAddress! + at, elementOffset: elementOffset, count: count) }
        if file.elementType == type { return try file.readBits(into: storage.bits.baseAddress! + at, elementOffset: elementOffset, count: count) }
        let chunk = 1 << 16
        let floats = OwnedBuffer<Float>(uninitializedCount: min(count, chunk))
        var done = 0
        while done < count {
            let n = min(chunk, count - done)
            try file.read(into: floats.baseAddress, elementOffset: elementOffset + done, count: n)
            storage.store(floats.baseAddress, at: at + done, count: n)
            done += n
        }
    }

    static func querySegments(_ selection: QuerySelection, tokens: Int, rank: Int, fileRows: Int?) throws -> [ShardSegment]? {
        guard case let .root(count, position) = selection else { return nil }
        guard count >= 1 else { throw InputFiles.ShapeMismatch(description: "--queries must be at least 1 (got \(count))") }
        if let fileRows, fileRows != tokens, fileRows != count {
            throw InputFiles.ShapeMismatch(description: "the Q file holds \(fileRows) queries but \(count) were asked for")
        }
        let first = position ?? tokens - count
        guard first >= 0 else {
            throw InputFiles.ShapeMismatch(description: "\(count) queries do not fit before position \(first + count) of a \(tokens)-token sequence; ask for at most \(tokens)")
        }
        guard first + count <= tokens else {
            throw InputFiles.ShapeMismatch(
                description: "queries at positions \(first)..<\(first + count) run past the \(tokens)-token sequence; "
                    + "--query-position can be at most \(tokens - count) for \(count) queries")
        }
        return [ShardSegment(positions: first ..< first + count, localRow: 0)]
    }

    /// An input row holding NaN or infinity, named by tensor, file and the first bad element's position.
    public struct NonFiniteInput: Error, CustomStringConvertible {
        public let description: String
    }

    /// Refuses rows holding NaN or infinity: a NaN would otherwise turn its whole row of scores
    /// into "no key is visible" and its result into a plausible zero. One pass over this rank's
    /// rows; names the tensor, its file and the first bad element's global position.
    func checkFinite(q: String, k: String, v: String) throws {
        let kvCount = keyRows * shape.kvRowWidth
        let tensors: [(name: String, source: String, storage: ElementStorage, first: Int, count: Int, width: Int, segments: [ShardSegment])] = [
            ("Q", q, queryStorage, 0, queryRows * shape.queryRowWidth, shape.queryRowWidth, querySegments),
            ("K", k, keyValueStorage, 0, kvCount, shape.kvRowWidth, keySegments),
            ("V", v, keyValueStorage, kvCount, kvCount, shape.kvRowWidth, keySegments),
        ]
        for tensor in tensors {
            guard let bad = tensor.storage.firstNonFinite(tensor.first ..< tensor.first + tensor.count) else { continue }
            let index = bad - tensor.first
            let row = index / tensor.width, within = index % tensor.width
            let segment = tensor.segments.first { row >= $0.localRow && row < $0.localRow + $0.positions.count }
            let token = segment.map { $0.positions.lowerBound + row - $0.localRow } ?? row
            let value = tensor.storage.value(at: bad)
            let what = value.isNaN ? "NaN" : (value > 0 ? "+inf" : "-inf")
            let source = tensor.source == "synthetic" ? "(synthetic)" : tensor.source
            throw NonFiniteInput(
                description: "\(tensor.name) \(source) holds \(what) at [token \(token), head \(within / shape.headDim), dim \(within % shape.headDim)]; "
                    + "expected finite numbers (seqpar refuses NaN and infinity rather than compute a wrong result)")
        }
    }

    /// Makes the synthetic rows, rounded to the element type as they are stored.
    func fillSynthetic(seed: UInt64, queries fillQueries: Bool) {
        let kvCount = keyRows * shape.kvRowWidth
        let keyRanges = keySegments.map(\.positions)
        if fillQueries {
            Self.fill(queryStorage, at: 0, seed: seed, tensor: .query, rowWidth: shape.queryRowWidth, rows: querySegments.map(\.positions))
        }
        Self.fill(keyValueStorage, at: 0, seed: seed, tensor: .key, rowWidth: shape.kvRowWidth, rows: keyRanges)
        Self.fill(keyValueStorage, at: kvCount, seed: seed, tensor: .value, rowWidth: shape.kvRowWidth, rows: keyRanges)
    }

    /// `SyntheticInput.fill` into `storage` from element `at`: in place for f32, a few rows at a
    /// time through float32 for 16-bit types.
    static func fill(_ storage: ElementStorage, at: Int, seed: UInt64, tensor: SyntheticInput.Tensor, rowWidth: Int, rows ranges: [Range<Int>]) {
        let count = ranges.reduce(0) { $0 + $1.count } * rowWidth
        if storage.elementType == .f32 {
            return SyntheticInput.fill(
                UnsafeMutableBufferPointer(start: storage.floats.baseAddress! + at, count: count), seed: seed, tensor: tensor, rowWidth: rowWidth,
                rows: ranges)
        }
        let chunkRows = max(1, 4096 / max(1, rowWidth))
        let chunk = OwnedBuffer<Float>(uninitializedCount: chunkRows * rowWidth)
        var offset = at
        for range in ranges {
            for first in stride(from: range.lowerBound, to: range.upperBound, by: chunkRows) {
                let rows = first ..< min(range.upperBound, first + chunkRows)
                SyntheticInput.fill(chunk.buffer, seed: seed, tensor: tensor, rowWidth: rowWidth, rows: [rows])
                storage.store(chunk.baseAddress, at: offset, count: rows.count * rowWidth)
                offset += rows.count * rowWidth
            }
        }
    }
}

/// The .npy input files: the attention shape they describe, and whole tensors read from them (or made
/// synthetic) for verify's single-rank comparison.
public enum InputFiles {
    /// Input files (or a star query request) whose shapes do not fit together or the sequence, saying which and why.
    public struct ShapeMismatch: Error, CustomStringConvertible {
        public let description: String
    }

    /// The attention shape the three files describe, or an error saying which file disagrees.
    static func shape(q: NpyFile, k: NpyFile, v: NpyFile, scale: Float?, selfAttention: Bool) throws -> AttentionShape {
        for file in [q, k, v] where file.header.shape.count != 3 {
            throw NpyError.wrongRank(path: file.path, expected: 3, shape: file.header.shape)
        }
        let (qs, ks, vs) = (q.header.shape, k.header.shape, v.header.shape)
        guard ks == vs else {
            throw ShapeMismatch(description: "K \(k.path) has shape \(ks) but V \(v.path) has shape \(vs); they must match")
        }
        guard qs[0] == ks[0] || !selfAttention else {
            throw ShapeMismatch(description: "Q \(q.path) has \(qs[0]) tokens but K \(k.path) has \(ks[0]); self-attention needs the same token count")
        }
        guard qs[2] == ks[2] else {
            throw ShapeMismatch(description: "Q \(q.path) has head dim \(qs[2]) but K \(k.path) has \(ks[2]); they must match")
        }
        guard ks[0] > 0 else { throw ShapeMismatch(description: "K \(k.path) has no tokens") }
        do {
            return try AttentionShape(heads: qs[1], kvHeads: ks[1], headDim: qs[2], scale: scale)
        } catch {
            throw ShapeMismatch(description: "Q \(q.path) \(qs) and K \(k.path) \(ks): \(error)")
        }
    }

    /// Reads all rows of Q (for the single-rank backward of `verify --backward`).
    public static func loadWholeQueries(_ source: InputSource, shape: AttentionShape, tokens: Int) throws -> TokenTensor {
        let elementType = try source.elementType()
        switch source.origin {
        case let .synthetic(seed, tokens, shape):
            return rounded(SyntheticInput.tensor(.query, seed: seed, heads: shape.heads, headDim: shape.headDim, rows: [0 ..< tokens]), elementType)
        case let .files(qPath, _, _, _):
            let q = try NpyFile.load(qPath, readingBF16: source.readsBF16)
            guard q.values.count == tokens * shape.queryRowWidth else {
                throw ShapeMismatch(description: "Q \(qPath) has shape \(q.shape); the backward needs the whole sequence, [\(tokens), \(shape.heads), \(shape.headDim)]")
            }
            return rounded(TokenTensor(tokens: tokens, heads: shape.heads, headDim: shape.headDim, values: q.values), elementType)
        }
    }

    /// `tensor` with its values rounded to `elementType`.
    static func rounded(_ tensor: TokenTensor, _ elementType: ElementType) -> TokenTensor {
        var tensor = tensor
        tensor.values.withUnsafeMutableBufferPointer { elementType.round($0) }
        return tensor
    }

    /// Reads all rows of K and V (for the single-rank comparison of `verify`).
    public static func loadWhole(_ source: InputSource, shape: AttentionShape, tokens: Int) throws -> (k: TokenTensor, v: TokenTensor) {
        let elementType = try source.elementType()
        switch source.origin {
        case let .synthetic(seed, tokens, shape):
            return (
                rounded(SyntheticInput.tensor(.key, seed: seed, heads: shape.kvHeads, headDim: shape.headDim, rows: [0 ..< tokens]), elementType),
                rounded(SyntheticInput.tensor(.value, seed: seed, heads: shape.kvHeads, headDim: shape.headDim, rows: [0 ..< tokens]), elementType)
            )
        case let .files(_, kPath, vPath, _):
            let k = try NpyFile.load(kPath, readingBF16: source.readsBF16), v = try NpyFile.load(vPath, readingBF16: source.readsBF16)
            return (
                rounded(TokenTensor(tokens: tokens, heads: shape.kvHeads, headDim: shape.headDim, values: k.values), elementType),
                rounded(TokenTensor(tokens: tokens, heads: shape.kvHeads, headDim: shape.headDim, values: v.values), elementType)
            )
        }
    }
}
