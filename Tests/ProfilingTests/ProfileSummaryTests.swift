// The profile's arithmetic on hand-made event lists: unions of intervals, exposed and total
// communication, overlap, imbalance, clock offsets; and the trace and SVG writers' output parsed
// back (JSON with JSONSerialization and into the trace's Codable types, the SVG with Foundation's
// XML parser).

import Foundation
import Profiling
import Testing

#if canImport(FoundationXML)
    import FoundationXML
#endif

@Suite("profile figures from events")
struct ProfileSummaryTests {
    @Test("union of intervals: overlaps and touching intervals merge, gaps do not count")
    func union() {
        #expect(unionLength([]) == 0)
        #expect(unionLength([(0, 1), (0.5, 2), (3, 4)]) == 3)
        #expect(unionLength([(3, 4), (0, 1), (1, 2)]) == 3)
        #expect(unionLength([(0, 10), (2, 3), (4, 5)]) == 10)
        #expect(unionLength([(5, 5), (1, 0)]) == 0)
    }

    /// Rank 0 computes 0..4 s while a send (0..3) and a receive (0.5..5) are in flight, then
    /// waits 4..5 for the receive: total communication 5 s (the union 0..5), exposed 1 s.
    @Test("overlap = 1 - exposed / total on a hand-made ring step")
    func overlap() {
        let events = [
            ProfileEvent(kind: .compute, start: 0, end: 4),
            ProfileEvent(kind: .send, start: 0, end: 3, peer: 1, bytesSent: 1000),
            ProfileEvent(kind: .receive, start: 0.5, end: 5, peer: 1, bytesReceived: 1500),
            ProfileEvent(kind: .wait, start: 4, end: 5, peer: 1),
        ]
        let p = RankProfile(events)
        #expect(p.compute == 4)
        #expect(p.communication == 5)
        #expect(p.exposed == 1)
        #expect(abs(p.overlap - 0.8) < 1e-12)
        #expect(p.bytesSent == 1000 && p.bytesReceived == 1500)
        #expect(p.bandwidth == 500)
    }

    @Test("collectives are exposed for their whole span; a rank that never communicates has overlap 1")
    func collectives() {
        let p = RankProfile([
            ProfileEvent(kind: .compute, start: 0, end: 1), ProfileEvent(kind: .alltoall, start: 1, end: 3, bytesSent: 10, bytesReceived: 10),
            ProfileEvent(kind: .merge, start: 3, end: 3.5), ProfileEvent(kind: .reduce, start: 2.5, end: 4),
        ])
        #expect(p.exposed == 3 && p.communication == 3 && p.overlap == 0)
        #expect(p.merge == 0.5)
        #expect(RankProfile([ProfileEvent(kind: .compute, start: 0, end: 1)]).overlap == 1)
    }

    @Test("imbalance is max over mean compute")
    func imbalance() {
        let summary = ProfileSummary(events: [
            [ProfileEvent(kind: .compute, start: 0, end: 1)],
            [ProfileEvent(kind: .compute, start: 0, end: 3)],
        ])
        #expect(summary.imbalance == 1.5)
        #expect(summary.span == 3)
        #expect(ProfileSummary.imbalance([2, 2, 2]) == 1)
        #expect(ProfileSummary.imbalance([0, 0]) == 1)
        #expect(summary.table().contains("load imbalance (max/mean compute): 1.500"))
    }

    /// Remote clock 100 s ahead; the fastest exchange (round trip 2 us) pins it best.
    @Test("clock offset from the minimum round-trip sample")
    func offset() {
        let samples: [(sent: Double, remote: Double, received: Double)] = [
            (0, 100.004, 0.010),  // slow, asymmetric: would say 99.999
            (1, 101.000001, 1.000002),  // fast: 100 - 1e-6... within 1 us
            (2, 102.02, 2.03),
        ]
        #expect(abs(clockOffset(samples: samples) - 100) < 1e-6)
        #expect(clockOffset(samples: []) == 0)
    }

    @Test("events survive packing to doubles and a clock shift")
    func packing() {
        let e = ProfileEvent(kind: .receive, start: 1.5, end: 2.25, peer: 3, bytesReceived: 4096)
        #expect(ProfileEvent(packed: e.packed[...]) == e)
        #expect(e.shifted(by: 1).start == 0.5 && e.shifted(by: 1).end == 1.25)
        #expect(ProfileEvent(packed: [99, 0, 0, 0, 0, 0][...]) == nil)
    }

    @Test("the event log is bounded: events past its capacity are counted, not stored")
    func bounded() {
        let log = EventLog(capacity: 2)
        for i in 0 ..< 5 { log.record(.compute, start: Double(i), end: Double(i) + 1) }
        #expect(log.count == 2 && log.dropped == 3 && log.events.map(\.start) == [0, 1])
        #expect(recording(.merge, on: nil) { 7 } == 7)
        #expect(recording(.merge, on: log) { 8 } == 8 && log.dropped == 4)
    }

    static let threeRanks: [[ProfileEvent]] = (0 ..< 3).map { r in
        let t = Double(r) * 0.001
        return [
            ProfileEvent(kind: .compute, start: t, end: t + 0.010),
            ProfileEvent(kind: .send, start: t, end: t + 0.004, peer: (r + 1) % 3, bytesSent: 1_048_576),
            ProfileEvent(kind: .receive, start: t, end: t + 0.012, peer: (r + 2) % 3, bytesReceived: 1_048_576),
            ProfileEvent(kind: .wait, start: t + 0.010, end: t + 0.012, peer: (r + 2) % 3),
            ProfileEvent(kind: .alltoall, start: t + 0.012, end: t + 0.015, bytesSent: 64, bytesReceived: 64),
        ]
    }

    @Test("the Chrome trace is JSON with one named process per rank and a lane per kind")
    func chromeTrace() throws {
        let text = ChromeTrace.json(events: Self.threeRanks, origin: 0, label: { "rank \($0) \"q\"" }, metadata: ["k": "v"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let events = try #require(object["traceEvents"] as? [[String: Any]])
        let names = events.filter { $0["name"] as? String == "process_name" }
        #expect(Set(names.compactMap { $0["pid"] as? Int }) == [0, 1, 2])
        #expect((names.first?["args"] as? [String: Any])?["name"] as? String == "rank 0 \"q\"")
        let complete = events.filter { $0["ph"] as? String == "X" }
        #expect(complete.count == 15)
        #expect(Set(complete.compactMap { $0["name"] as? String }) == ["compute", "send", "recv", "wait", "alltoall"])
        let compute = try #require(complete.first { $0["pid"] as? Int == 1 && $0["name"] as? String == "compute" })
        #expect(number(compute["ts"]) == 1000 && number(compute["dur"]) == 10000)
        #expect(Set(complete.map { $0["tid"] as? Int }).count == 5)
    }

    @Test("the Chrome trace decodes into its Codable types: names, pids, lanes, times in the events' order")
    func chromeTraceDecodes() throws {
        let origin = -0.002
        let metadata = ["command": "seqpar profile", "problem": "a/b \"c\""]
        let text = ChromeTrace.json(events: Self.threeRanks, origin: origin, metadata: metadata)
        let trace = try JSONDecoder().decode(ChromeTraceFile.self, from: Data(text.utf8))
        #expect(trace == ChromeTrace.file(events: Self.threeRanks, origin: origin, metadata: metadata))
        #expect(trace.displayTimeUnit == "ms" && trace.otherData == metadata)
        #expect(text.hasSuffix("}\n") && text.range(of: #"[0-9]e[-+]?[0-9]"#, options: .regularExpression) == nil, "an exponent in \(text)")

        let named = trace.traceEvents.filter { $0.name == "process_name" }
        #expect(named.map(\.pid) == [0, 1, 2] && named.map(\.args.name) == ["rank 0", "rank 1", "rank 2"])
        #expect(trace.traceEvents.filter { $0.name == "process_sort_index" }.map(\.args.sortIndex) == [0, 1, 2])
        for rank in 0 ..< 3 {
            let lanes = trace.traceEvents.filter { $0.name == "thread_name" && $0.pid == rank }
            #expect(lanes.map(\.tid) == [0, 1, 2, 3, 4])
            #expect(lanes.map(\.args.name) == ["compute", "send", "receive", "wait", "collective"])
        }
        #expect(trace.traceEvents.filter { $0.ph == "M" }.allSatisfy { $0.ts == nil && $0.dur == nil && $0.cat == nil })

        for (rank, list) in Self.threeRanks.enumerated() {
            let complete = trace.traceEvents.filter { $0.ph == "X" && $0.pid == rank }
            #expect(complete.map(\.name) == ["compute", "send", "recv", "wait", "alltoall"])
            #expect(complete.map(\.tid) == [0, 1, 2, 3, 4])
            #expect(complete.map(\.cat) == ["compute", "communication", "communication", "communication", "communication"])
            let times = complete.map { ($0.ts ?? -1, $0.dur ?? -1) }
            for (event, (ts, dur)) in zip(list, times) {
                #expect(abs(ts - (event.start - origin) * 1e6) < 1e-6 && abs(dur - event.duration * 1e6) < 1e-6)
            }
            // Start times in the trace keep the events' order (the wait and the all-to-all come last).
            for i in list.indices {
                for j in list.indices where list[i].start < list[j].start { #expect(times[i].0 < times[j].0) }
            }
            #expect(complete[1].args == .init(peer: (rank + 1) % 3, bytesSent: 1_048_576))
            #expect(complete[2].args == .init(peer: (rank + 2) % 3, bytesReceived: 1_048_576))
            #expect(complete[4].args == .init(bytesSent: 64, bytesReceived: 64) && complete[0].args == .init())
        }
    }

    @Test("the SVG timeline is well-formed XML with one row per rank and every colour in the legend")
    func svg() throws {
        let text = TimelineSVG.render(events: Self.threeRanks, origin: 0, title: "a <title> & more")
        let collector = SVGCollector()
        let parser = XMLParser(data: Data(text.utf8))
        parser.delegate = collector
        #expect(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? "")")
        #expect(collector.root == "svg")
        #expect(collector.rankRows == ["rank-0", "rank-1", "rank-2"])
        #expect(collector.rectClasses.isSuperset(of: ["compute", "send", "recv", "wait", "alltoall"]))
        #expect(collector.texts.contains("time (ms)"))
        #expect(collector.texts.contains("wait (exposed communication)"))
    }
}

func number(_ value: Any?) -> Double? { (value as? NSNumber)?.doubleValue }

final class SVGCollector: NSObject, XMLParserDelegate {
    var root: String?
    var rankRows: [String] = []
    var rectClasses: Set<String> = []
    var texts: [String] = []
    private var text = ""

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String]) {
        if root == nil { root = name }
        if name == "g", attributes["class"] == "rank", let id = attributes["id"] { rankRows.append(id) }
        if name == "rect", let c = attributes["class"] { rectClasses.insert(c) }
        text = ""
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" { texts.append(text) }
    }
}
