// `seqpar probe` under mpirun: its JSON has the sizes in increasing order and positive, finite
// latency, bandwidth and sgemm figures, and the file it writes holds the same.

import Foundation
import Testing

extension EndToEnd {
    @Suite("probe")
    struct ProbeRuns {
        @Test("probe at 2 ranks: increasing sizes, positive finite latency and bandwidth")
        func probe() async throws {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-probe-\(UUID().uuidString).json").path
            defer { try? FileManager.default.removeItem(atPath: file) }
            let result = try await launch(ranks: 2, arguments: ["probe", "--json", "--out", file])
            #expect(result.status == 0, "\(result)")
            let json = try result.json()
            let written = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file))) as? [String: Any])
            #expect(number(written, "ranks") == 2 && number(json, "ranks") == 2)
            func positive(_ x: Double?) -> Bool { x.map { $0.isFinite && $0 > 0 } ?? false }
            let p2p = try #require(array(json, "point_to_point"))
            let sizes = p2p.compactMap { number($0["bytes"]) }
            #expect(sizes.count >= 6 && sizes == sizes.sorted() && Set(sizes).count == sizes.count && sizes.first == 8 && sizes.last == 16_777_216)
            #expect(p2p.allSatisfy { positive(number($0["latency_us"])) && positive(number($0["bandwidth_mb_s"])) }, "\(p2p)")
            let a2a = try #require(array(json, "alltoall"))
            let peerSizes = a2a.compactMap { number($0["bytes_per_peer"]) }
            #expect(peerSizes.count >= 5 && peerSizes == peerSizes.sorted())
            #expect(a2a.allSatisfy { positive(number($0["time_us"])) && positive(number($0["bandwidth_mb_s"])) })
            let sgemm = perRank(json, "sgemm_gflops")
            #expect(sgemm.count == 2 && sgemm.allSatisfy { positive($0) })
            let bf16 = perRank(json, "bf16_gflops")
            #expect(bf16.count == 2 && bf16.allSatisfy { positive($0) }, "bf16_gflops: \(bf16)")
            #expect(array(written, "point_to_point")?.count == p2p.count)
        }
    }
}
