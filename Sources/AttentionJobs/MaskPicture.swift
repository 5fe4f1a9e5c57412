// A mask's block map, to look at rather than read: the sequence cut into cells of `cell` tokens
// a side, each shaded by the fraction of its (query, key) pairs the mask shows (white: none,
// black: all), queries down, keys across, with the mask's density in the title. Cells are
// classified by the mask's own block relation; only partial ones are counted pair by pair.

import AttentionCore
import FileFormats
import Planning

public enum MaskPicture {
    /// The fraction of visible pairs in each cell, row-major [cells, cells], and the cell size.
    public static func blockMap(_ mask: AttentionMask, tokens: Int, cells wanted: Int = 128) -> (cell: Int, cells: Int, fill: [Double]) {
        let cell = max(1, (tokens + wanted - 1) / max(1, wanted))
        let cells = (tokens + cell - 1) / cell
        var fill = [Double](repeating: 0, count: cells * cells)
        for r in 0 ..< cells {
            let q = r * cell ..< min(tokens, (r + 1) * cell)
            for c in 0 ..< cells {
                let k = c * cell ..< min(tokens, (c + 1) * cell)
                switch mask.relation(queries: q, keys: k, head: 0) {
                case .hidden: break
                case .full: fill[r * cells + c] = 1
                case .partial: fill[r * cells + c] = visiblePairs(queries: q, keys: k, mask: mask, heads: 1) / Double(q.count * k.count)
                }
            }
        }
        return (cell, cells, fill)
    }

    /// The block map as an SVG document, `title` above it.
    public static func svg(_ mask: AttentionMask, tokens: Int, title: String, cells wanted: Int = 128) -> String {
        let (cell, cells, fill) = blockMap(mask, tokens: tokens, cells: wanted)
        let size = 512.0, unit = size / Double(max(1, cells)), top = 40.0, left = 10.0
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(size + 2 * left))" height="\(Int(size + top + 30))" font-family="sans-serif" font-size="13">
            <rect x="0" y="0" width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="18">\(escaped(title))</text>
            <text x="\(left)" y="34" font-size="11">queries down, keys across; cells of \(cell) token\(cell == 1 ? "" : "s"), shaded by the fraction visible</text>
            <rect x="\(left)" y="\(top)" width="\(size)" height="\(size)" fill="none" stroke="#999"/>

            """
        for r in 0 ..< cells {
            for c in 0 ..< cells where fill[r * cells + c] > 0 {
                let shade = Int((1 - fill[r * cells + c]) * 220)
                svg +=
                    "<rect x=\"\(format(left + Double(c) * unit))\" y=\"\(format(top + Double(r) * unit))\" width=\"\(format(unit))\" height=\"\(format(unit))\" fill=\"rgb(\(shade),\(shade),\(shade))\"/>\n"
            }
        }
        svg += "<text x=\"\(left)\" y=\"\(Int(size + top + 20))\" font-size=\"11\">0 to \(tokens) tokens</text>\n</svg>\n"
        return svg
    }

    /// The slices as a .npy file's bytes: int64, [n, 5].
    public static func sliceFile(_ slices: MaskSlices) -> [UInt8] {
        var bytes = NpyHeader.encode(shape: [slices.slices.count, 5], dtype: "<i8")
        for value in slices.rows { withUnsafeBytes(of: Int64(value).littleEndian) { bytes += $0 } }
        return bytes
    }

    private static func format(_ x: Double) -> String { String(Double((x * 100).rounded()) / 100) }

    private static func escaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
