// The MPI binding on its own, in this process on MPI_COMM_WORLD, as the in-process strategy tests
// run: the test binary starts itself as a child, alone (world size 1) and under Launch/local at 3
// ranks, and each rank checks point-to-point messages, the collectives and a record reduction
// against values every rank can compute. The test run itself never starts MPI (see
// InProcessStrategyTests for why).

import Foundation
import MPIBinding
import SeqparTestSupport
import Testing

let isMPIChild = ProcessInfo.processInfo.environment["SEQPAR_MPI_BINDING_TESTS"] == "1"

@Suite("MPI binding in-process on MPI_COMM_WORLD")
struct MPIBindingInProcess {
    @Test("messages, collectives and a record reduction", .enabled(if: isMPIChild, "runs in a process of its own, started by 'the binding at 1 and 3 ranks'"))
    func binding() throws {
        try MPIRuntime.start()
        defer { MPIRuntime.finish() }
        let world = try Communicator.world()
        let (rank, size) = (world.rank, world.size)

        // A ring: each rank sends its rank's values to the next and receives the previous one's.
        let outgoing = (0 ..< 5).map { Float(rank * 10 + $0) }
        var incoming = [Float](repeating: -1, count: 5)
        try outgoing.withUnsafeBufferPointer { send in
            try incoming.withUnsafeMutableBufferPointer { receive in
                var r = try world.irecv(receive, from: (rank - 1 + size) % size, tag: 7)
                var s = try world.isend(send, to: (rank + 1) % size, tag: 7)
                try world.wait(&s)
                try world.wait(&r)
            }
        }
        let previous = (rank - 1 + size) % size
        #expect(incoming == (0 ..< 5).map { Float(previous * 10 + $0) })

        #expect(try world.allreduce(Double(rank + 1), .sum) == Double(size * (size + 1) / 2))
        #expect(try world.allreduce([Int64(rank), Int64(-rank)], .max) == [Int64(size - 1), 0])
        #expect(try world.allgather(Int32(rank * rank)) == (0 ..< size).map { Int32($0 * $0) })
        #expect(try world.allgatherv([Int64](repeating: Int64(rank), count: rank)) == (0 ..< size).map { [Int64](repeating: Int64($0), count: $0) })
        #expect(try world.allgather("rank \(rank)") == (0 ..< size).map { "rank \($0)" })

        var broadcast = [Float](repeating: Float(rank), count: 3)
        try broadcast.withUnsafeMutableBufferPointer { try world.broadcast($0, root: size - 1) }
        #expect(broadcast == [Float](repeating: Float(size - 1), count: 3))

        // All-to-all: rank r sends r * 100 + destination to each destination.
        let sends = (0 ..< size).map { Double(rank * 100 + $0) }
        var receives = [Double](repeating: 0, count: size)
        try sends.withUnsafeBufferPointer { s in try receives.withUnsafeMutableBufferPointer { try world.alltoall(s, $0, countPerRank: 1) } }
        #expect(receives == (0 ..< size).map { Double($0 * 100 + rank) })

        // A record reduction: records of 3 floats, combined as (sum, max, min); onto rank 0, then onto all.
        let reduction = try RecordReduction(width: 3) { incoming, accumulated, count, width in
            for i in 0 ..< count {
                let a = incoming + i * width, b = accumulated + i * width
                b[0] += a[0]
                b[1] = max(a[1], b[1])
                b[2] = min(a[2], b[2])
            }
        }
        for root in [0, nil] as [Int?] {
            var records: [Float] = []
            var expected: [Float] = []
            let sum = Float(size * (size - 1) / 2)
            for record in 0 ..< 4 {
                records += [Float(rank + record), Float(rank), Float(rank)]
                expected += [sum + Float(size * record), Float(size - 1), 0]
            }
            try records.withUnsafeMutableBufferPointer { try reduction.reduce($0, root: root, communicator: world) }
            if root == nil || rank == root {
                #expect(records == expected, "root \(String(describing: root))")
            }
        }

        // A count beyond MPI's int is an error naming the call, not a truncated message.
        let huge = UnsafeMutableBufferPointer<Float>(start: UnsafeMutablePointer(bitPattern: 64), count: Int(Int32.max) + 1)
        #expect(throws: MPIError.self) { try world.broadcast(huge, root: 0) }

        try world.barrier()
        print("mpi binding: rank \(rank) of \(size) checked")
    }
}

@Suite("MPI binding at 1 and 3 ranks", .serialized)
struct MPIBindingLaunch {
    @Test("the binding at 1 and 3 ranks", .enabled(if: !isMPIChild, "this process is the in-process child"), arguments: [1, 3])
    func ranks(_ ranks: Int) async throws {
        let result = try await runTestsAsChild(filter: "MPIBindingInProcess/binding", marker: "SEQPAR_MPI_BINDING_TESTS", ranks: ranks, timeout: 120)
        #expect(!result.timedOut, "ran past 120 s: a hang\n\(result.transcript)")
        #expect(result.status == 0, "\(result.transcript)")
        for rank in 0 ..< ranks {
            #expect(result.stdout.contains("mpi binding: rank \(rank) of \(ranks) checked"), "rank \(rank) did not finish\n\(result.transcript)")
        }
    }
}
