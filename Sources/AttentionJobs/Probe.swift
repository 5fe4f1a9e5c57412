// The machine as the strategies see it, in the spirit of the OSU micro-benchmarks: ping-pong
// between rank 0 and its ring neighbour rank 1 over message sizes (warm-up rounds first,
// iterations scaled down as messages grow; one-way time = round trip / 2), all-to-all over sizes
// (every rank, the slowest rank's time), and each rank's sgemm rate with all ranks busy at once.
// The other ranks wait at a barrier during the ping-pong, as they would not in a ring step; on a
// machine with fewer cores than ranks, their waiting takes cores (say so when you quote figures).

import AttentionCore
import BlasRuntime
import Buffers
import MPIBinding
import Planning
import Profiling
import SequenceParallel

/// Measures the machine as the strategies see it: ping-pong and all-to-all times over message sizes, and
/// each rank's sgemm rate with all ranks busy (`ProbeFigures`).
public enum Probe {
    /// 8 B to 16 MiB, by factors of 8 (and 16 MiB itself).
    public static let pointToPointSizes = [8, 64, 512, 4096, 32768, 262_144, 2_097_152, 16_777_216]
    /// Bytes per peer: 8 B to 2 MiB, by factors of 8.
    public static let allToAllSizes = [8, 64, 512, 4096, 32768, 262_144, 2_097_152]

    static func iterations(bytes: Int, budget: Int) -> Int { max(10, min(1000, budget / max(1, bytes))) }

    public static func measure(_ communicator: Communicator, threads: Int = 1) throws -> ProbeFigures {
        let (rank, size) = (communicator.rank, communicator.size)
        var pointToPoint: [ProbeFigures.PointToPoint] = []
        if size > 1 {
            let buffer = OwnedBuffer<UInt8>(repeating: 1, count: pointToPointSizes.max()!)
            for bytes in pointToPointSizes {
                let message = UnsafeMutableBufferPointer(rebasing: buffer.buffer[0 ..< bytes])
                let iterations = iterations(bytes: bytes, budget: 64 << 20), warmup = max(2, iterations / 10)
                try communicator.barrier()
                var start = 0.0
                for i in 0 ..< warmup + iterations {
                    if i == warmup { start = ProfileClock.now() }
                    if rank == 0 {
                        var s = try communicator.isend(UnsafeBufferPointer(message), to: 1, tag: 1)
                        try communicator.wait(&s)
                        var r = try communicator.irecv(message, from: 1, tag: 2)
                        try communicator.wait(&r)
                    } else if rank == 1 {
                        var r = try communicator.irecv(message, from: 0, tag: 1)
                        try communicator.wait(&r)
                        var s = try communicator.isend(UnsafeBufferPointer(message), to: 0, tag: 2)
                        try communicator.wait(&s)
                    }
                }
                let oneWay = (ProfileClock.now() - start) / Double(2 * iterations)
                let figure = try communicator.allgather(oneWay)[0]
                pointToPoint.append(.init(bytes: bytes, latencyMicroseconds: figure * 1e6, bandwidthMBps: Double(bytes) / figure / 1e6))
            }
            withExtendedLifetime(buffer) {}  // through the last request into it
        }

        var allToAll: [ProbeFigures.AllToAll] = []
        let largest = allToAllSizes.max()! * size
        let send = OwnedBuffer<UInt8>(repeating: 2, count: largest), receive = OwnedBuffer<UInt8>(repeating: 0, count: largest)
        for bytes in allToAllSizes {
            let iterations = max(5, min(200, (32 << 20) / max(1, bytes * size))), warmup = max(2, iterations / 10)
            try communicator.barrier()
            var start = 0.0
            for i in 0 ..< warmup + iterations {
                if i == warmup { start = ProfileClock.now() }
                try communicator.alltoall(UnsafeBufferPointer(send.buffer), receive.buffer, countPerRank: bytes)
            }
            let time = try communicator.allreduce((ProfileClock.now() - start) / Double(iterations), .max)
            allToAll.append(
                .init(
                    bytesPerPeer: bytes, microseconds: time * 1e6,
                    bandwidthMBps: size > 1 ? Double((size - 1) * bytes) / time / 1e6 : 0))
        }

        try communicator.barrier()
        let ownSgemm = BlasPeak.measure(threads: threads)
        let sgemm = try communicator.allgather(ownSgemm)
        try communicator.barrier()
        let bf16 = try communicator.allgather(
            BF16Gemm.path.usesBF16Units ? BlasPeak.measureBF16(threads: threads) : ownSgemm)
        let rankHosts = try communicator.allgather(MPIRuntime.processorName())
        return ProbeFigures(
            ranks: size, pointToPoint: pointToPoint, allToAll: allToAll, sgemmGflops: sgemm, bf16Gflops: bf16,
            note: "\(size) ranks on \(Set(rankHosts).sorted().joined(separator: ", ")); \(MPIRuntime.libraryVersion())",
            hosts: rankHosts)
    }
}
