// The online-softmax merge as an MPI reduction. A record is one (query, head): its lse followed by
// its headDim output values, all float32; MPIBinding's `RecordReduction` carries the records and
// calls this file's merge on them pairwise (docs/DESIGN.md's merge, which is associative and
// commutative, so MPI may combine ranks in any order).

import AttentionCore
import Buffers
import MPIBinding
import Profiling

/// The online-softmax merge as a user-defined MPI reduction over (lse, O) records, with its datatype: merges
/// every rank's partial result for the same rows onto one rank or all.
public final class SoftmaxMergeReduction {
    /// Floats per record: 1 + headDim.
    public var recordWidth: Int { reduction.width }
    private let reduction: RecordReduction

    public init(headDim: Int) throws(MPIError) {
        reduction = try RecordReduction(width: 1 + headDim) { incoming, accumulated, count, width in
            SoftmaxMergeReduction.merge(records: incoming, into: accumulated, count: count, width: width)
        }
    }

    /// Merges `count` records of `width` floats from `input` into `output` (output = input ⊕ output).
    public static func merge(records input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, count: Int, width: Int) {
        for i in 0 ..< count {
            let a = input + i * width, b = output + i * width
            OnlineSoftmax.merge(into: b + 1, lse: &b[0], from: a + 1, lse: a[0], count: width - 1)
        }
    }

    /// Merges every rank's partial result for the same rows (over its own keys) into `root`'s:
    /// the result there (on every rank when `root` is nil), nil elsewhere.
    public func merge(_ partial: PartialResult, root: Int?, communicator: Communicator) throws -> PartialResult? {
        let (rows, heads, d) = (partial.rows, partial.heads, partial.headDim)
        precondition(d + 1 == recordWidth)
        let records = OwnedBuffer<Float>(uninitializedCount: max(1, rows * heads * recordWidth))
        recording(.merge, on: communicator.recorder) {
            partial.output.withUnsafeBufferPointer { output in
                let records = records.baseAddress
                for row in 0 ..< rows {  // one record per (row, head): lse, then O
                    for h in 0 ..< heads {
                        let record = records + (row * heads + h) * recordWidth
                        record[0] = partial.lse[h * rows + row]
                        (record + 1).update(from: output.baseAddress! + (row * heads + h) * d, count: d)
                    }
                }
            }
        }
        try reduce(UnsafeMutableBufferPointer(rebasing: records.buffer[0 ..< rows * heads * recordWidth]), root: root, communicator: communicator)
        guard root == nil || communicator.rank == root else { return nil }
        var result = PartialResult(emptyRows: rows, heads: heads, headDim: d)
        recording(.merge, on: communicator.recorder) {
            result.output.withUnsafeMutableBufferPointer { output in
                let records = records.baseAddress
                for row in 0 ..< rows {
                    for h in 0 ..< heads {
                        let record = records + (row * heads + h) * recordWidth
                        result.lse[h * rows + row] = record[0]
                        (output.baseAddress! + (row * heads + h) * d).update(from: record + 1, count: d)
                    }
                }
            }
        }
        return result
    }

    /// Merges every rank's records into `root`'s (nil: into every rank's).
    public func reduce(_ records: UnsafeMutableBufferPointer<Float>, root: Int?, communicator: Communicator) throws(MPIError) {
        try reduction.reduce(records, root: root, communicator: communicator)
    }
}
