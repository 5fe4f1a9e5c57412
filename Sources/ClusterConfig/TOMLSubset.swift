// The small part of TOML that cluster configs use, parsed with line numbers so that every error
// names the file and line. Supported: `# comments`, `key = value`, `[table]` and `[a.b]` headers,
// `[[array-of-tables]]` headers, "basic strings" (escapes \" \\ \uXXXX), 'literal strings',
// integers, true/false, arrays (may span lines, trailing comma allowed) and { inline tables }.
// Deliberately not supported, each refused with a message: floats, dates, multi-line strings,
// dotted keys on the left of `=`. Refused too, because config values become command-line
// arguments and script lines: control characters (U+0000-U+001F, U+007F-U+009F: tab and line
// breaks, raw or as \t \n \r \uXXXX escapes) in any string or key; and arrays or inline tables
// nested deeper than `TOML.maxDepth`, checked before the parser recurses, so no input can exhaust
// the stack. cluster-configs/README.md documents the same subset.

/// A value and where it was written.
public indirect enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int)
    case boolean(Bool)
    case array([TOMLValue])
    case table(TOMLTable)

    /// What a user calls this kind of value, for messages.
    public var kind: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .array: "an array"
        case .table: "a table"
        }
    }
}

public struct TOMLEntry: Equatable, Sendable {
    public var key: String
    public var value: TOMLValue
    /// Line of the key (of the header for tables made by `[header]`).
    public var line: Int

    public init(key: String, value: TOMLValue, line: Int) { (self.key, self.value, self.line) = (key, value, line) }

    /// Equal keys and values; where they were written does not matter.
    public static func == (a: TOMLEntry, b: TOMLEntry) -> Bool { a.key == b.key && a.value == b.value }
}

/// A table: its entries in the order written.
public struct TOMLTable: Equatable, Sendable {
    public var entries: [TOMLEntry] = []
    /// Line of its header (1 for the root table, the `{` for inline tables).
    public var line: Int
    /// Keys whose arrays were made by `[[key]]` headers (and may grow by more of them).
    public internal(set) var tableArrays: Set<String> = []
    /// Made by a header (or implicitly by a longer header), not inline.
    var defined = false

    public init(line: Int) { self.line = line }

    public subscript(key: String) -> TOMLEntry? { entries.first { $0.key == key } }

    /// The same keys with equal values, in any order (a header table may be written after keys
    /// that follow it in an inline form).
    public static func == (a: TOMLTable, b: TOMLTable) -> Bool {
        a.entries.count == b.entries.count && a.entries.allSatisfy { b[$0.key] == $0 }
    }
}

/// An error in a config file: the file, the line and what was expected there.
public struct ConfigError: Error, Equatable, CustomStringConvertible, Sendable {
    public let file: String
    public let line: Int?
    public let message: String

    public init(file: String, line: Int?, _ message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String { line.map { "\(file):\($0): \(message)" } ?? "\(file): \(message)" }
}

public enum TOML {
    /// How deep arrays and inline tables may nest in a value, and how many keys a `[header]` may
    /// name: far more than a config needs (it nests two deep), few enough that the recursive
    /// parser and the values' own recursive code (==, deinit, the tests' renderer) stay shallow.
    public static let maxDepth = 32

    /// Parses `text` (the contents of `file`, which only names it in errors).
    public static func parse(_ text: String, file: String) throws -> TOMLTable {
        var parser = Parser(text: text, file: file)
        return try parser.document()
    }
}

private struct Parser {
    let scalars: [Unicode.Scalar]
    let file: String
    var position = 0
    var line = 1
    /// Arrays and inline tables open around the value being read.
    var depth = 0

    init(text: String, file: String) {
        scalars = Array(text.unicodeScalars)
        self.file = file
    }

    static func isBareKey(_ c: Unicode.Scalar) -> Bool {
        ("a" ... "z").contains(c) || ("A" ... "Z").contains(c) || ("0" ... "9").contains(c) || c == "_" || c == "-"
    }

    var current: Unicode.Scalar? { position < scalars.count ? scalars[position] : nil }

    func error(_ message: String, line: Int? = nil) -> ConfigError { ConfigError(file: file, line: line ?? self.line, message) }

    func describeCurrent() -> String {
        guard let c = current else { return "the end of the file" }
        if c == "\n" { return "the end of the line" }
        if Self.isControl(c) { return "the control character \(Self.codePoint(c))" }
        return "'\(Character(c))'"
    }

    /// C0 and C1 control characters and DEL: in an mpirun argument a NUL would split it in
    /// two where arguments travel NUL-separated (cluster-plan --null), a line break would start
    /// a new line of a batch script, and the others hide what a terminal shows.
    static func isControl(_ c: Unicode.Scalar) -> Bool { c.properties.generalCategory == .control }

    /// U+0000 (NUL), U+0009 (tab), U+001B: how a message names a character it cannot show.
    static func codePoint(_ c: Unicode.Scalar) -> String {
        let hex = String(c.value, radix: 16, uppercase: true)
        let names: [UInt32: String] = [0: "NUL", 9: "tab", 0xA: "line feed", 0xD: "carriage return", 0x1B: "escape", 0x7F: "delete"]
        return "U+" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex + (names[c.value].map { " (\($0))" } ?? "")
    }

    /// Refuses a decoded string or key holding a control character, on the line it starts.
    func checkNoControl(_ text: String.UnicodeScalarView, _ what: String, line: Int) throws {
        guard let c = text.first(where: Self.isControl) else { return }
        throw error("\(what) may not hold the control character \(Self.codePoint(c)): config values become command-line arguments and script lines", line: line)
    }

    /// Counts one more level of nesting around `body`, refusing it past `TOML.maxDepth`
    /// before anything recurses.
    mutating func nested<T>(_ body: (inout Parser) throws -> T) throws -> T {
        guard depth < TOML.maxDepth else {
            throw error("arrays and inline tables nest more than \(TOML.maxDepth) deep here; expected at most \(TOML.maxDepth) (a cluster config needs two)")
        }
        depth += 1
        defer { depth -= 1 }
        return try body(&self)
    }

    mutating func skipSpaces() {
        while let c = current, c == " " || c == "\t" { position += 1 }
    }

    /// Spaces, then an optional comment: the rest of the line.
    mutating func skipComment() {
        skipSpaces()
        if current == "#" { while let c = current, c != "\n" { position += 1 } }
    }

    /// Spaces, comments and line breaks (inside arrays).
    mutating func skipBlank() {
        while true {
            skipComment()
            guard current == "\n" || current == "\r" else { return }
            if current == "\n" { line += 1 }
            position += 1
        }
    }

    mutating func endOfLine() throws {
        skipComment()
        if current == "\r" { position += 1 }
        guard current == nil || current == "\n" else {
            throw error("expected the end of the line after the value, found \(describeCurrent())")
        }
    }

    mutating func document() throws -> TOMLTable {
        var root = TOMLTable(line: 1)
        root.defined = true
        var path: [String] = []
        while true {
            skipBlank()
            guard let c = current else { return root }
            let startLine = line
            if c == "[" {
                position += 1
                let isArray = current == "["
                if isArray { position += 1 }
                let keys = try keyPath()
                guard current == "]" else { throw error("expected ']' to close the table header, found \(describeCurrent())") }
                position += 1
                if isArray {
                    guard current == "]" else { throw error("expected ']]' to close the [[\(keys.joined(separator: "."))]] header") }
                    position += 1
                }
                try endOfLine()
                try open(&root, keys[...], isArray: isArray, line: startLine, fullPath: keys)
                path = keys
            } else {
                let key = try self.key()
                skipSpaces()
                if current == "." { throw error("dotted keys ('\(key).…') are not part of this format; write a [\(key)] table") }
                guard current == "=" else { throw error("expected '=' after the key '\(key)', found \(describeCurrent())") }
                position += 1
                skipSpaces()
                let value = try self.value()
                try endOfLine()
                try insert(&root, path[...], TOMLEntry(key: key, value: value, line: startLine), fullPath: path)
            }
        }
    }

    mutating func keyPath() throws -> [String] {
        var keys: [String] = []
        repeat {
            if !keys.isEmpty { position += 1 }
            // open() and insert() recurse once per key.
            guard keys.count < TOML.maxDepth else {
                throw error("the table header names more than \(TOML.maxDepth) keys; expected at most \(TOML.maxDepth) (a cluster config needs two)")
            }
            skipSpaces()
            keys.append(try key())
            skipSpaces()
        } while current == "."
        return keys
    }

    mutating func key() throws -> String {
        if current == "\"" { return try basicString(what: "a key") }
        if current == "'" { return try literalString(what: "a key") }
        let start = position
        while let c = current, Self.isBareKey(c) { position += 1 }
        guard position > start else { throw error("expected a key (letters, digits, '_' or '-', or a quoted key), found \(describeCurrent())") }
        return String(String.UnicodeScalarView(scalars[start ..< position]))
    }

    /// Opens the table a header names, creating the tables on its way.
    func open(_ table: inout TOMLTable, _ keys: ArraySlice<String>, isArray: Bool, line: Int, fullPath: [String]) throws {
        let key = keys.first!
        let name = fullPath.joined(separator: ".")
        let index = table.entries.firstIndex { $0.key == key }
        if keys.count == 1 {
            if isArray {
                var made = TOMLTable(line: line)
                made.defined = true
                if let index {
                    guard table.tableArrays.contains(key), case .array(var elements) = table.entries[index].value else {
                        throw error("[[\(name)]]: '\(key)' is already defined on line \(table.entries[index].line) as something else", line: line)
                    }
                    elements.append(.table(made))
                    table.entries[index].value = .array(elements)
                } else {
                    table.entries.append(TOMLEntry(key: key, value: .array([.table(made)]), line: line))
                    table.tableArrays.insert(key)
                }
            } else if let index {
                guard case .table(var existing) = table.entries[index].value, !existing.defined else {
                    throw error("[\(name)] is already defined on line \(table.entries[index].line)", line: line)
                }
                existing.defined = true
                existing.line = line
                table.entries[index].value = .table(existing)
            } else {
                var made = TOMLTable(line: line)
                made.defined = true
                table.entries.append(TOMLEntry(key: key, value: .table(made), line: line))
            }
            return
        }
        try descend(&table, key, line: line, name: name) { inner in
            try open(&inner, keys.dropFirst(), isArray: isArray, line: line, fullPath: fullPath)
        }
    }

    /// Adds a key/value pair to the table of the current header.
    func insert(_ table: inout TOMLTable, _ path: ArraySlice<String>, _ entry: TOMLEntry, fullPath: [String]) throws {
        guard let key = path.first else {
            if let existing = table[entry.key] {
                throw error("the key '\(entry.key)' is already set on line \(existing.line)", line: entry.line)
            }
            table.entries.append(entry)
            return
        }
        try descend(&table, key, line: entry.line, name: fullPath.joined(separator: ".")) { inner in
            try insert(&inner, path.dropFirst(), entry, fullPath: fullPath)
        }
    }

    /// Runs `body` on the table under `key` (the last one, for an array of tables), creating it
    /// (implicitly, so a later header may still define it) when missing.
    func descend(_ table: inout TOMLTable, _ key: String, line: Int, name: String, _ body: (inout TOMLTable) throws -> Void) throws {
        guard let index = table.entries.firstIndex(where: { $0.key == key }) else {
            var made = TOMLTable(line: line)
            try body(&made)
            table.entries.append(TOMLEntry(key: key, value: .table(made), line: line))
            return
        }
        switch table.entries[index].value {
        case .table(var inner):
            try body(&inner)
            table.entries[index].value = .table(inner)
        case .array(var elements) where table.tableArrays.contains(key):
            guard case .table(var inner) = elements[elements.count - 1] else { return }
            try body(&inner)
            elements[elements.count - 1] = .table(inner)
            table.entries[index].value = .array(elements)
        default:
            throw error("[\(name)]: '\(key)' is already set on line \(table.entries[index].line) to \(table.entries[index].value.kind), not a table", line: line)
        }
    }

    mutating func value() throws -> TOMLValue {
        guard let c = current else { throw error("expected a value after '=', found the end of the file") }
        switch c {
        case "\"", "'":
            if position + 2 < scalars.count, scalars[position + 1] == c, scalars[position + 2] == c {
                let quotes = String(repeating: Character(c), count: 3)
                throw error("multi-line strings (\(quotes)…\(quotes)) are not supported in a cluster config; write the value on one line, in \"…\" or '…'")
            }
            return .string(c == "'" ? try literalString(what: "a string") : try basicString(what: "a string"))
        case "[": return try nested { try $0.array() }
        case "{": return try nested { try $0.inlineTable() }
        case "t", "f":
            for word in ["true", "false"] where matches(word) {
                position += word.unicodeScalars.count
                return .boolean(word == "true")
            }
        case "+", "-", "0" ... "9": return try integer()
        default: break
        }
        throw error("expected a value (a \"string\", an integer, true or false, an [array] or an { inline table }), found \(describeCurrent())")
    }

    func matches(_ word: String) -> Bool {
        let w = Array(word.unicodeScalars)
        guard position + w.count <= scalars.count, Array(scalars[position ..< position + w.count]) == w else { return false }
        let next = position + w.count < scalars.count ? scalars[position + w.count] : " "
        return !Self.isBareKey(next)
    }

    mutating func integer() throws -> TOMLValue {
        let start = position
        if current == "+" || current == "-" { position += 1 }
        while let c = current, ("0" ... "9").contains(c) || c == "_" { position += 1 }
        let text = String(String.UnicodeScalarView(scalars[start ..< position])).replacingUnderscores()
        if let c = current, c == "." || c == "e" || c == "E" {
            throw error("floating-point numbers are not part of this format; every number here is an integer")
        }
        if let c = current, Self.isBareKey(c) || c == ":" {
            throw error("expected an integer, found '\(String(String.UnicodeScalarView(scalars[start ... position])))…' (quote text: \"…\")")
        }
        guard let n = Int(text) else {
            if text.unicodeScalars.contains(where: { ("0" ... "9").contains($0) }) {
                throw error("the integer \(text) is out of range; expected one from \(Int.min) to \(Int.max)")
            }
            throw error("expected an integer, found '\(text)'")
        }
        return .integer(n)
    }

    /// `what`: "a string" or "a key", for messages.
    mutating func basicString(what: String) throws -> String {
        let startLine = line
        position += 1
        var out = String.UnicodeScalarView()
        while true {
            guard let c = current, c != "\n" else { throw error("unterminated string: expected a closing '\"' on this line", line: startLine) }
            position += 1
            if c == "\"" {
                try checkNoControl(out, what, line: startLine)
                return String(out)
            }
            guard c == "\\" else { out.append(c); continue }
            guard let e = current else { continue }
            position += 1
            switch e {
            case "\"": out.append("\"")
            case "\\": out.append("\\")
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "u":
                let digits = position + 4 <= scalars.count ? String(String.UnicodeScalarView(scalars[position ..< position + 4])) : ""
                guard digits.unicodeScalars.allSatisfy(\.properties.isASCIIHexDigit), let code = UInt32(digits, radix: 16), let scalar = Unicode.Scalar(code) else {
                    throw error("expected four hex digits after \\u in a string")
                }
                position += 4
                out.append(scalar)
            default: throw error("unknown escape '\\\(Character(e))' in a string; use \\\\ for a backslash, or a 'literal string'")
            }
        }
    }

    mutating func literalString(what: String) throws -> String {
        let startLine = line
        position += 1
        let start = position
        while let c = current, c != "'" {
            guard c != "\n" else { throw error("unterminated string: expected a closing \"'\" on this line", line: startLine) }
            position += 1
        }
        guard current == "'" else { throw error("unterminated string: expected a closing \"'\" on this line", line: startLine) }
        let text = String.UnicodeScalarView(scalars[start ..< position])
        try checkNoControl(text, what, line: startLine)
        position += 1
        return String(text)
    }

    mutating func array() throws -> TOMLValue {
        let startLine = line
        position += 1
        var elements: [TOMLValue] = []
        while true {
            skipBlank()
            if current == "]" { position += 1; return .array(elements) }
            guard current != nil else { throw error("unterminated array: expected ']' to close the array opened on line \(startLine)") }
            elements.append(try value())
            skipBlank()
            if current == "," { position += 1; continue }
            if current == "]" { position += 1; return .array(elements) }
            guard current != nil else { throw error("unterminated array: expected ']' to close the array opened on line \(startLine)") }
            throw error("expected ',' or ']' in the array opened on line \(startLine), found \(describeCurrent())")
        }
    }

    mutating func inlineTable() throws -> TOMLValue {
        var table = TOMLTable(line: line)
        position += 1
        skipSpaces()
        if current == "}" { position += 1; return .table(table) }
        while true {
            skipSpaces()
            let keyLine = line
            let key = try self.key()
            skipSpaces()
            guard current == "=" else { throw error("expected '=' after the key '\(key)' in the inline table, found \(describeCurrent())") }
            position += 1
            skipSpaces()
            let value = try self.value()
            if table[key] != nil { throw error("the key '\(key)' is set twice in this inline table") }
            table.entries.append(TOMLEntry(key: key, value: value, line: keyLine))
            skipSpaces()
            if current == "," { position += 1; continue }
            if current == "}" { position += 1; return .table(table) }
            throw error("expected ',' or '}' in the inline table (which must stay on one line), found \(describeCurrent())")
        }
    }
}

private extension String {
    func replacingUnderscores() -> String { String(unicodeScalars.filter { $0 != "_" }) }
}
