// A user-defined MPI reduction over fixed-width records of float32: an MPI contiguous datatype of
// `width` floats carries a record, and a combining function of the caller's (associative and
// commutative, so MPI may combine ranks in any order) merges records pairwise. MPI calls the
// operator through a C function pointer with no context, so the operator finds the caller's
// function by the record's datatype, which each reduction creates for itself.

import CMPI
import Synchronization

/// Reduces float32 records of `width` floats with a caller's combining function, onto one rank or all.
public final class RecordReduction {
    /// Merges `count` records of `width` floats from `incoming` into `accumulated` (accumulated = incoming ⊕ accumulated).
    public typealias Combine = @Sendable (_ incoming: UnsafePointer<Float>, _ accumulated: UnsafeMutablePointer<Float>, _ count: Int, _ width: Int) -> Void

    /// Floats per record.
    public let width: Int
    private var datatype: MPI_Datatype?
    private var operation: MPI_Op?

    /// Each live reduction's combining function, by its datatype's address.
    private static let combining = Mutex<[Int: Combine]>([:])

    public init(width: Int, combine: @escaping Combine) throws(MPIError) {
        self.width = width
        try check(MPI_Type_contiguous(Int32(width), seqpar_float(), &datatype), "MPI_Type_contiguous")
        try check(MPI_Type_commit(&datatype), "MPI_Type_commit")
        let key = Int(bitPattern: datatype)
        Self.combining.withLock { $0[key] = combine }
        try check(
            MPI_Op_create(
                { incoming, accumulated, count, type in
                    var bytes: Int32 = 0
                    MPI_Type_size(type!.pointee, &bytes)
                    guard let combine = RecordReduction.combining.withLock({ $0[Int(bitPattern: type!.pointee)] }) else {
                        preconditionFailure("MPI called a record reduction's operator with a datatype it did not create")
                    }
                    combine(
                        UnsafePointer(incoming!.assumingMemoryBound(to: Float.self)), accumulated!.assumingMemoryBound(to: Float.self),
                        Int(count!.pointee), Int(bytes) / MemoryLayout<Float>.size)
                }, 1, &operation), "MPI_Op_create")
    }

    deinit {
        let key = Int(bitPattern: datatype)
        _ = Self.combining.withLock { $0.removeValue(forKey: key) }
        if MPIRuntime.isStarted {
            MPI_Op_free(&operation)
            MPI_Type_free(&datatype)
        }
    }

    /// Merges every rank's records into `root`'s (nil: into every rank's), in place.
    public func reduce(_ records: UnsafeMutableBufferPointer<Float>, root: Int?, communicator: Communicator) throws(MPIError) {
        precondition(records.count % width == 0)
        let count = try mpiCount(records.count / width, "MPI_Reduce")
        // As a tree or ring would: each rank passes its records on once.
        let (sent, received) = communicator.size == 1 ? (0, 0) : (communicator.rank == root ? 0 : records.count * 4, records.count * 4)
        communicator.countTransfer(sent: sent, received: received)
        try communicator.collective(.reduce, sent: sent, received: received) { () throws(MPIError) in
            WaitState.enter(.reduce, ranks: communicator.size)
            defer { WaitState.leave() }
            if let root {
                let inPlace = communicator.rank == root
                try check(
                    MPI_Reduce(
                        inPlace ? UnsafeRawPointer(seqpar_in_place()) : UnsafeRawPointer(records.baseAddress), records.baseAddress, count,
                        datatype, operation, Int32(root), communicator.handle), "MPI_Reduce")
            } else {
                try check(MPI_Allreduce(seqpar_in_place(), records.baseAddress, count, datatype, operation, communicator.handle), "MPI_Allreduce")
            }
        }
    }
}
