// TOML text from a parsed table, for the tests' round trips: what the parser reads back must be
// equal to what it wrote. Only the tests render configs, so the renderer lives here.

import ClusterConfig

extension TOMLTable {
    /// The table as TOML text this parser reads back to an equal table.
    func rendered() -> String {
        var lines: [String] = []
        render(into: &lines, path: [])
        return lines.joined(separator: "\n") + "\n"
    }

    private func render(into lines: inout [String], path: [String]) {
        for entry in entries {
            if case .table = entry.value { continue }
            if tableArrays.contains(entry.key) { continue }
            lines.append("\(TOML.renderKey(entry.key)) = \(TOML.render(entry.value))")
        }
        for entry in entries {
            if case .table(let table) = entry.value {
                let header = (path + [entry.key]).map(TOML.renderKey).joined(separator: ".")
                lines.append("[\(header)]")
                table.render(into: &lines, path: path + [entry.key])
            } else if tableArrays.contains(entry.key), case .array(let elements) = entry.value {
                let header = (path + [entry.key]).map(TOML.renderKey).joined(separator: ".")
                for case .table(let table) in elements {
                    lines.append("[[\(header)]]")
                    table.render(into: &lines, path: path + [entry.key])
                }
            }
        }
    }
}

extension TOML {
    static func isBareKey(_ c: Unicode.Scalar) -> Bool {
        ("a" ... "z").contains(c) || ("A" ... "Z").contains(c) || ("0" ... "9").contains(c) || c == "_" || c == "-"
    }

    static func renderKey(_ key: String) -> String {
        !key.isEmpty && key.unicodeScalars.allSatisfy(isBareKey) ? key : renderString(key)
    }

    static func renderString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func render(_ value: TOMLValue) -> String {
        switch value {
        case .string(let text): renderString(text)
        case .integer(let n): String(n)
        case .boolean(let b): b ? "true" : "false"
        case .array(let elements): "[" + elements.map(render).joined(separator: ", ") + "]"
        case .table(let table):
            "{ " + table.entries.map { "\(renderKey($0.key)) = \(render($0.value))" }.joined(separator: ", ") + " }"
        }
    }
}
