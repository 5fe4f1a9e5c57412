// A rank's rows of O and LSE written into shared output files: each rank writes only its own
// rows, at their global positions, and a set of outputs is committed all or nothing through an
// `OutputTransaction`.

import AttentionCore
import FileFormats
import MPIBinding
import SequenceParallel

extension PartialResult {
    /// Writes this rank's rows of O (`[extent.count, heads, headDim]`) and LSE (`[heads, extent.count]`)
    /// into files already created at full size (an `OutputTransaction`'s temporaries), where
    /// `extent` is the range of global positions the files cover. Collective: every rank writes
    /// its rows, and all fail together if one cannot.
    public func write(
        output outputPath: String?, lse lsePath: String?, segments: [ShardSegment], extent: Range<Int>,
        communicator: Communicator
    ) throws {
        let (heads, d, rows, tokens, output, lse) = (self.heads, self.headDim, self.rows, extent.count, self.output, self.lse)
        let rowWidth = heads * d
        try communicator.together {
            guard rows > 0 else { return }
            try output.withUnsafeBufferPointer { o in
                try lse.withUnsafeBufferPointer { l in
                    if let outputPath {
                        let file = try NpyFile.open(writing: outputPath)
                        for s in segments where !s.positions.isEmpty {
                            try file.write(
                                from: o.baseAddress! + s.localRow * rowWidth,
                                elementOffset: (s.positions.lowerBound - extent.lowerBound) * rowWidth,
                                count: s.positions.count * rowWidth)
                        }
                    }
                    if let lsePath {
                        let file = try NpyFile.open(writing: lsePath)
                        for h in 0 ..< heads {
                            for s in segments where !s.positions.isEmpty {
                                try file.write(
                                    from: l.baseAddress! + h * rows + s.localRow,
                                    elementOffset: h * tokens + s.positions.lowerBound - extent.lowerBound, count: s.positions.count)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes O and LSE all or nothing: into the transaction's temporaries, then renamed into
    /// place once every rank has written; on failure the temporaries are removed.
    public func write(
        _ transaction: OutputTransaction, outputOption: String, lseOption: String, segments: [ShardSegment],
        extent: Range<Int>, communicator: Communicator
    ) throws {
        do {
            try write(
                output: transaction.temporary(outputOption), lse: transaction.temporary(lseOption), segments: segments,
                extent: extent, communicator: communicator)
            try transaction.commit()
        } catch {
            transaction.abandon()
            throw error
        }
    }
}
