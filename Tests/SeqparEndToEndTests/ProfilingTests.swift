// Profiling under real mpirun: `seqpar profile` writes a Chrome trace that parses as JSON with one
// process per rank and the expected event kinds, and a well-formed SVG with a row per rank; the
// bytes the profile recorded equal the traffic counters, and the heads strategy's counters equal
// the all-to-all volumes computed from the token partition and the head split.

import AttentionCore
import AttentionJobs
import Foundation
import Testing

#if canImport(FoundationXML)
    import FoundationXML
#endif

extension EndToEnd {
    @Suite("profiling")
    struct Profiling {
        static let shape = ["--tokens", "1001", "--heads", "6", "--kv-heads", "2", "--head-dim", "32"]

        @Test(
            "profile: trace with a lane per rank, SVG with a row per rank, recorded bytes = traffic counters",
            arguments: [2, 3], ["zigzag", "heads", "star"])
        func trace(ranks: Int, strategy: String) async throws {
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-profile-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: folder) }
            let trace = folder.appendingPathComponent("trace.json").path
            let result = try await launch(ranks: ranks, arguments: ["profile", "--json", "--causal", "--strategy", strategy, "--trace", trace] + Self.shape)
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)

            let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: trace))) as? [String: Any])
            let events = try #require(object["traceEvents"] as? [[String: Any]])
            let processes = events.filter { $0["name"] as? String == "process_name" }.compactMap { $0["pid"] as? Int }
            #expect(processes.sorted() == Array(0 ..< ranks))
            let complete = events.filter { $0["ph"] as? String == "X" }
            #expect(Set(complete.compactMap { $0["pid"] as? Int }) == Set(0 ..< ranks))
            let names = Set(complete.compactMap { $0["name"] as? String })
            let expected: Set<String> =
                switch strategy {
                case "heads": ["compute", "merge", "alltoall"]
                case "star": ["compute", "merge", "bcast", "reduce"]
                default: ["compute", "send", "recv"]
                }
            #expect(names.isSuperset(of: expected), "event names \(names)")
            #expect(complete.allSatisfy { (number($0["ts"]) ?? -1) >= 0 && (number($0["dur"]) ?? -1) >= 0 })

            let svg = try Data(contentsOf: URL(fileURLWithPath: trace.replacingOccurrences(of: ".json", with: ".svg")))
            let rows = RowCounter()
            let parser = XMLParser(data: svg)
            parser.delegate = rows
            #expect(parser.parse(), "SVG not well-formed: \(parser.parserError.map { "\($0)" } ?? "")")
            #expect(rows.root == "svg" && rows.ranks == (0 ..< ranks).map { "rank-\($0)" })

            let profile = try #require(json.profile)
            #expect(profile.ranks.map(\.bytesSent) == json.bytesSent.map(Double.init))
            #expect(profile.ranks.map(\.bytesReceived) == json.bytesReceived.map(Double.init))
            for p in profile.ranks {
                #expect(p.overlap >= 0 && p.overlap <= 1)
                #expect(p.computeSeconds > 0)
                #expect(p.exposedCommunicationSeconds <= p.communicationSeconds + 1e-9)
            }
            #expect(profile.loadImbalance >= 1)
        }

        /// Heads: Q, K and V go out in one all-to-all each, O and LSE come back in one each. A rank
        /// sends member m (not itself) its rows of m's heads (Q, O's way back: m's rows of its own
        /// heads) and of the kv heads those read; what stays on the rank is not traffic.
        @Test("heads bytes equal the all-to-all volumes, uneven tokens and heads", arguments: [2, 3, 4])
        func headsBytes(ranks: Int) async throws {
            let (tokens, heads, kvHeads, d) = (1001, 6, 2, 32)
            let result = try await launch(
                ranks: ranks,
                arguments: [
                    "run", "--json", "--strategy", "heads", "--tokens", "\(tokens)",
                    "--heads", "\(heads)", "--kv-heads", "\(kvHeads)", "--head-dim", "\(d)",
                ])
            #expect(result.status == 0, "\(result)")
            let json = try result.report(RunReport.self)
            let rows = (0 ..< ranks).map { TokenPartition.chunk($0, of: ranks, tokens: tokens).count }
            let headsOf = (0 ..< ranks).map { TokenPartition.chunk($0, of: ranks, tokens: heads).count }
            let group = heads / kvHeads
            let kvHeadsOf = (0 ..< ranks).map { m -> Int in
                let h = TokenPartition.chunk(m, of: ranks, tokens: heads)
                return (h.upperBound - 1) / group - h.lowerBound / group + 1
            }
            let sent = (0 ..< ranks).map { r in
                (0 ..< ranks).filter { $0 != r }.reduce(0) { total, m in
                    total + 4
                        * (rows[r] * headsOf[m] * d + 2 * rows[r] * kvHeadsOf[m] * d  // Q, K, V out
                            + rows[m] * headsOf[r] * d + headsOf[r] * rows[m])  // O, LSE back
                }
            }
            let received = (0 ..< ranks).map { r in
                (0 ..< ranks).filter { $0 != r }.reduce(0) { total, m in
                    total + 4
                        * (rows[m] * headsOf[r] * d + 2 * rows[m] * kvHeadsOf[r] * d
                            + rows[r] * headsOf[m] * d + headsOf[m] * rows[r])
                }
            }
            #expect(json.bytesSent == sent.map(Int64.init))
            #expect(json.bytesReceived == received.map(Int64.init))
        }
    }
}

final class RowCounter: NSObject, XMLParserDelegate {
    var root: String?
    var ranks: [String] = []

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String]) {
        if root == nil { root = name }
        if name == "g", attributes["class"] == "rank", let id = attributes["id"] { ranks.append(id) }
    }
}
