// The backward pass's inputs and outputs on one rank: dO for this rank's output rows (from the
// seed or a .npy file, each rank reading only its own rows, refused when it holds NaN or
// infinity), and dQ, dK and dV written each rank its own rows as O is written.

import AttentionCore
import FileFormats
import MPIBinding

/// Where dO comes from.
public enum OutputGradientSource: Sendable {
    /// Deterministic values from the inputs' seed.
    case synthetic(seed: UInt64)
    /// A .npy file, [tokens, heads, headDim], of any element type seqpar reads (rounded to the job's).
    case file(String)

    /// dO of the rows `segments` (global positions, stacked in order), [rows, heads, headDim],
    /// rounded to `elementType` (a `<V2` file is read as bf16 only in a bf16 job).
    public func load(segments: [ShardSegment], tokens: Int, shape: AttentionShape, elementType: ElementType = .f32) throws -> [Float] {
        let width = shape.queryRowWidth
        var values = [Float](repeating: 0, count: LocalShard.rows(segments) * width)
        switch self {
        case let .synthetic(seed):
            values.withUnsafeMutableBufferPointer {
                SyntheticInput.fill($0, seed: seed, tensor: .outputGrad, rowWidth: width, rows: segments.map(\.positions))
            }
        case let .file(path):
            let file = try NpyFile.open(reading: path, readingBF16: elementType == .bf16)
            let expected = [tokens, shape.heads, shape.headDim]
            guard file.header.shape == expected else {
                throw InputFiles.ShapeMismatch(description: "dO \(path) has shape \(file.header.shape); expected \(expected) ([tokens, heads, headDim], as O)")
            }
            try values.withUnsafeMutableBufferPointer { buffer in
                for segment in segments where !segment.positions.isEmpty {
                    try file.read(
                        into: buffer.baseAddress! + segment.localRow * width, elementOffset: segment.positions.lowerBound * width,
                        count: segment.positions.count * width)
                }
            }
        }
        values.withUnsafeMutableBufferPointer { elementType.round($0) }
        let bad = values.withUnsafeBufferPointer { ElementStorage.firstNonFinite($0.baseAddress!, count: $0.count) }
        if let bad {
            let row = bad / width
            let segment = segments.first { row >= $0.localRow && row < $0.localRow + $0.positions.count }
            let token = segment.map { $0.positions.lowerBound + row - $0.localRow } ?? row
            let name: String
            if case let .file(path) = self { name = path } else { name = "(synthetic)" }
            throw LocalShard.NonFiniteInput(
                description: "dO \(name) holds \(values[bad]) at [token \(token), head \((bad % width) / shape.headDim), dim \(bad % shape.headDim)]; "
                    + "expected finite numbers")
        }
        return values
    }
}

extension ShardGradients {
    /// Writes this rank's rows of dQ (its `querySegments` of the rows `dq` holds) and of dK and
    /// dV (`keySegments`) into files already created at full size: `[tokens, heads, headDim]`
    /// and `[tokens, kvHeads, headDim]`. Collective: all ranks fail together if one cannot.
    public func write(
        dq dqPath: String?, dk dkPath: String?, dv dvPath: String?, querySegments: [ShardSegment],
        keySegments: [ShardSegment], shape: AttentionShape, communicator: Communicator
    ) throws {
        try communicator.together {
            for (path, values, width, segments) in [
                (dqPath, dq, shape.queryRowWidth, querySegments), (dkPath, dk, shape.kvRowWidth, keySegments),
                (dvPath, dv, shape.kvRowWidth, keySegments),
            ] {
                guard let path, !values.isEmpty else { continue }
                let file = try NpyFile.open(writing: path)
                try values.withUnsafeBufferPointer { buffer in
                    for s in segments where !s.positions.isEmpty {
                        try file.write(
                            from: buffer.baseAddress! + s.localRow * width, elementOffset: s.positions.lowerBound * width,
                            count: s.positions.count * width)
                    }
                }
            }
        }
    }
}
