// What `seqpar probe` measures and the cost model reads: point-to-point one-way time over message
// sizes, all-to-all time over sizes, and each rank's sgemm (and bf16) GFLOP/s. Kept as plain Codable data
// so a probe taken once (`--out probe.json`) can feed later predictions (`--probe probe.json`).

import Foundation

public struct ProbeFigures: Codable, Equatable, Sendable {
    public struct PointToPoint: Codable, Equatable, Sendable {
        public var bytes: Int
        /// One-way time of a message of `bytes` (half a ping-pong round trip), microseconds.
        public var latencyMicroseconds: Double
        /// bytes / one-way time, in MB/s (10^6 bytes).
        public var bandwidthMBps: Double

        public init(bytes: Int, latencyMicroseconds: Double, bandwidthMBps: Double) {
            self.bytes = bytes
            self.latencyMicroseconds = latencyMicroseconds
            self.bandwidthMBps = bandwidthMBps
        }

        enum CodingKeys: String, CodingKey {
            case bytes, latencyMicroseconds = "latency_us", bandwidthMBps = "bandwidth_mb_s"
        }
    }

    public struct AllToAll: Codable, Equatable, Sendable {
        /// Bytes each rank sends to each other rank.
        public var bytesPerPeer: Int
        /// Time of one all-to-all (slowest rank), microseconds.
        public var microseconds: Double
        /// Bytes each rank sends, (P-1) * bytesPerPeer, per second, in MB/s.
        public var bandwidthMBps: Double

        public init(bytesPerPeer: Int, microseconds: Double, bandwidthMBps: Double) {
            self.bytesPerPeer = bytesPerPeer
            self.microseconds = microseconds
            self.bandwidthMBps = bandwidthMBps
        }

        enum CodingKeys: String, CodingKey {
            case bytesPerPeer = "bytes_per_peer", microseconds = "time_us", bandwidthMBps = "bandwidth_mb_s"
        }
    }

    public var ranks: Int
    public var pointToPoint: [PointToPoint]
    public var allToAll: [AllToAll]
    /// Each rank's sgemm GFLOP/s, measured with every rank busy at once.
    public var sgemmGflops: [Double]
    /// Each rank's rate for bf16 products the same way: oneDNN's bf16 GEMM where the CPU has bf16
    /// units, else its sgemm (bf16 is widened there). Absent in probes saved before it was recorded.
    public var bf16Gflops: [Double]?
    /// Where it was taken: hosts, MPI options; free text.
    public var note: String
    /// The host of each rank (absent in probes saved before it was recorded).
    public var hosts: [String]?

    public init(
        ranks: Int, pointToPoint: [PointToPoint], allToAll: [AllToAll], sgemmGflops: [Double], bf16Gflops: [Double]? = nil, note: String = "",
        hosts: [String]? = nil
    ) {
        self.bf16Gflops = bf16Gflops
        self.hosts = hosts
        self.ranks = ranks
        self.pointToPoint = pointToPoint
        self.allToAll = allToAll
        self.sgemmGflops = sgemmGflops
        self.note = note
    }

    enum CodingKeys: String, CodingKey {
        case ranks, pointToPoint = "point_to_point", allToAll = "alltoall", sgemmGflops = "sgemm_gflops", bf16Gflops = "bf16_gflops", note, hosts
    }

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// The probe's table.
    public func table() -> String {
        var lines = ["point to point, rank 0 <-> rank 1 (ping-pong):", "       bytes   one-way us        MB/s"]
        for p in pointToPoint {
            lines.append(String(format: "%12d %12.2f %11.1f", p.bytes, p.latencyMicroseconds, p.bandwidthMBps))
        }
        if pointToPoint.isEmpty { lines.append("  (one rank: nothing to measure)") }
        lines.append("all-to-all, \(ranks) ranks (slowest rank):")
        lines.append(" bytes/peer      time us   MB/s sent per rank")
        for a in allToAll {
            lines.append(String(format: "%11d %12.1f %11.1f", a.bytesPerPeer, a.microseconds, a.bandwidthMBps))
        }
        lines.append("sgemm GFLOP/s per rank, all ranks at once: " + sgemmGflops.map { String(format: "%.1f", $0) }.joined(separator: ", "))
        if let bf16Gflops {
            lines.append("bf16 GEMM GFLOP/s per rank (sgemm's where bf16 is widened): " + bf16Gflops.map { String(format: "%.1f", $0) }.joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }
}
