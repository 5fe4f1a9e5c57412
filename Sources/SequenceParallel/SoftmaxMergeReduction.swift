// The online-softmax merge as an MPI reduction operator. A record is one (query, head): its lse
// followed by its headDim output values, all float32; an MPI contiguous datatype of 1 + headDim
// floats carries it, and the operator merges records pairwise (docs/DESIGN.md's merge, which is
// associative and commutative, so MPI may combine ranks in any order).

import AttentionCore
import Buffers
import CMPI
import MPIBinding
import Profiling

/// The online-softmax merge as a user-defined MPI reduction over (lse, O) records, with its datatype: merges
/// every rank's partial result for the same rows onto one rank or all.
public final class SoftmaxMergeReduction {
    /// Floats per record: 1 + headDim.
    public let recordWidth: Int
    private var datatype: MPI_Datatype?
    private var operation: MPI_Op?

    public init(headDim: Int) throws(MPIError) {
        recordWidth = 1 + headDim
        try check(MPI_Type_contiguous(Int32(recordWidth), seqpar_float(), &datatype), "MPI_Type_contiguous")
        try check(MPI_Type_commit(&datatype), "MPI_Type_commit")
        try check(
            MPI_Op_create(
                { incoming, accumulated, count, type in
                    var bytes: Int32 = 0
                    MPI_Type_size(type!.pointee, &bytes)
                    SoftmaxMergeReduction.merge(
                        records: UnsafePointer(incoming!.assumingMemoryBound(to: Float.self)),
                        into: accumulated!.assumingMemoryBound(to: Float.self),
                        count: Int(count!.pointee), width: Int(bytes) / MemoryLayout<Float>.size)
                }, 1, &operation), "MPI_Op_create")
    }

    deinit {
        if MPIRuntime.isStarted {
            MPI_Op_free(&operation)
            MPI_Type_free(&datatype)
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
        precondition(records.count % recordWidth == 0)
        let count = try mpiCount(records.count / recordWidth, "MPI_Reduce")
        // As a tree or ring would: each rank passes its records on once.
        let (sent, received) = communicator.size == 1 ? (0, 0) : (communicator.rank == root ? 0 : records.count * 4, records.count * 4)
        communicator.countTransfer(sent: sent, received: received)
        try communicator.collective(.reduce, sent: sent, received: received) { () throws(MPIError) in
            if let root {
                let inPlace = communicator.rank == root
                WaitState.enter(.reduce, ranks: communicator.size)
                defer { WaitState.leave() }
                try check(
                    MPI_Reduce(
                        inPlace ? UnsafeRawPointer(seqpar_in_place()) : UnsafeRawPointer(records.baseAddress), records.baseAddress, count,
                        datatype, operation, Int32(root), communicator.handle), "MPI_Reduce")
            } else {
                WaitState.enter(.reduce, ranks: communicator.size)
                defer { WaitState.leave() }
                try check(MPI_Allreduce(seqpar_in_place(), records.baseAddress, count, datatype, operation, communicator.handle), "MPI_Allreduce")
            }
        }
    }
}
