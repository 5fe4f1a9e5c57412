// The run as a picture: one row per rank (a <g class="rank"> each), time across in ms. Each row has
// a compute lane (compute blue, merge purple) over a communication lane (transfers in flight
// orange, collectives green) with the time blocked in waits drawn in red on top of it, so hidden
// communication is orange under blue and exposed communication is red. A legend sits below.

public enum TimelineSVG {
    static let colours: [(kind: String, colour: String, label: String)] = [
        ("compute", "#4C78A8", "compute"), ("merge", "#B279A2", "merge / pack"),
        ("transfer", "#F58518", "transfer in flight (send / receive)"), ("collective", "#54A24B", "collective (alltoall, bcast, reduce)"),
        ("wait", "#E45756", "wait (exposed communication)"),
    ]

    static func colour(_ kind: EventKind) -> String {
        switch kind {
        case .compute: return colours[0].colour
        case .merge: return colours[1].colour
        case .send, .receive: return colours[2].colour
        case .alltoall, .broadcast, .reduce: return colours[3].colour
        case .wait: return colours[4].colour
        }
    }

    /// - Parameters:
    ///   - events: per rank, on a common clock; `origin` becomes 0 ms.
    public static func render(events: [[ProfileEvent]], origin: Double, title: String, label: (Int) -> String = { "rank \($0)" }) -> String {
        let end = events.joined().map(\.end).max() ?? origin
        let span = max(end - origin, 1e-6)
        let (left, right, top, laneHeight, rowGap) = (90.0, 30.0, 50.0, 16.0, 14.0)
        let plotWidth = 1100.0
        let rowHeight = 2 * laneHeight + 2
        let rows = events.count
        let axisY = top + Double(rows) * (rowHeight + rowGap)
        let legendY = axisY + 40
        let width = left + plotWidth + right, height = legendY + Double(colours.count) * 18 + 16
        func x(_ t: Double) -> Double { left + (t - origin) / span * plotWidth }

        var svg = [
            #"<?xml version="1.0" encoding="UTF-8"?>"#,
            #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(fixed(width, 0))" height="\#(fixed(height, 0))" viewBox="0 0 \#(fixed(width, 0)) \#(fixed(height, 0))" font-family="sans-serif" font-size="12">"#,
            #"<rect width="100%" height="100%" fill="white"/>"#,
            #"<text x="\#(fixed(left, 0))" y="24" font-size="14">\#(escape(title))</text>"#,
        ]
        for (rank, list) in events.enumerated() {
            let y = top + Double(rank) * (rowHeight + rowGap)
            svg.append(#"<g class="rank" id="rank-\#(rank)">"#)
            svg.append(#"<text x="8" y="\#(fixed(y + laneHeight + 4, 1))">\#(escape(label(rank)))</text>"#)
            svg.append(#"<rect x="\#(fixed(left, 1))" y="\#(fixed(y, 1))" width="\#(fixed(plotWidth, 1))" height="\#(fixed(rowHeight, 1))" fill="rgb(244,244,244)"/>"#)
            // Transfers first, then collectives and waits over them, then compute in its own lane.
            let order: [EventKind] = [.send, .receive, .alltoall, .broadcast, .reduce, .wait, .merge, .compute]
            for kind in order {
                let laneY = kind.isWork ? y : y + laneHeight + 2
                for e in list where e.kind == kind {
                    let x0 = x(e.start), w = max(0.5, x(e.end) - x0)
                    svg.append(
                        #"<rect class="\#(kind.name)" x="\#(fixed(x0, 2))" y="\#(fixed(laneY, 1))" width="\#(fixed(w, 2))" height="\#(fixed(laneHeight, 1))" fill="\#(colour(kind))"\#(kind == .send || kind == .receive ? #" fill-opacity="0.55""# : "")/>"#
                    )
                }
            }
            svg.append("</g>")
        }
        // Time axis in ms with about ten ticks at a round step.
        let spanMs = span * 1e3
        let rawStep = spanMs / 10
        var magnitude = 1.0
        while magnitude * 10 <= rawStep { magnitude *= 10 }
        while magnitude > rawStep { magnitude /= 10 }
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rawStep } ?? rawStep
        svg.append(#"<g class="axis"><line x1="\#(fixed(left, 1))" y1="\#(fixed(axisY, 1))" x2="\#(fixed(left + plotWidth, 1))" y2="\#(fixed(axisY, 1))" stroke="black"/>"#)
        var tick = 0.0
        while tick <= spanMs + 1e-9 {
            let tx = x(origin + tick / 1e3)
            svg.append(#"<line x1="\#(fixed(tx, 1))" y1="\#(fixed(axisY, 1))" x2="\#(fixed(tx, 1))" y2="\#(fixed(axisY + 5, 1))" stroke="black"/>"#)
            svg.append(#"<text x="\#(fixed(tx, 1))" y="\#(fixed(axisY + 18, 1))" text-anchor="middle">\#(fixed(tick, step < 1 ? 2 : 0))</text>"#)
            tick += step
        }
        svg.append(#"<text x="\#(fixed(left + plotWidth, 1))" y="\#(fixed(axisY + 32, 1))" text-anchor="end">time (ms)</text></g>"#)
        svg.append(#"<g class="legend">"#)
        for (i, entry) in colours.enumerated() {
            let ly = legendY + Double(i) * 18
            svg.append(
                #"<rect x="\#(fixed(left, 1))" y="\#(fixed(ly, 1))" width="14" height="12" fill="\#(entry.colour)"/><text x="\#(fixed(left + 20, 1))" y="\#(fixed(ly + 10, 1))">\#(escape(entry.label))</text>"#
            )
        }
        svg.append("</g>")
        svg.append("</svg>")
        return svg.joined(separator: "\n") + "\n"
    }

    static func escape(_ text: String) -> String {
        text.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;").replacingAll("\"", "&quot;")
    }
}

extension String {
    func replacingAll(_ target: Character, _ replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
