// NumPy .npy files (format 1.0, 2.0 and 3.0 headers), little-endian float32, bfloat16 or float16
// (ElementType.swift), C order: what
// researchers already have and what NumPy, PyTorch and JAX read and write. Reading and writing
// are positioned (swift-system's FileDescriptor: pread/pwrite, retried on EINTR), so each rank
// touches only its own rows of a shared file.
// Every failure names the file and says what was expected.

import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

public enum NpyError: Error, Equatable, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)
    case notNpy(path: String)
    case unsupportedVersion(path: String, major: Int, minor: Int)
    case malformedHeader(path: String, detail: String)
    case wrongDType(path: String, found: String)
    /// A `<V2` (or `<u2`, `<i2`) file read without `--dtype bf16`: its descr does not say bf16.
    case bf16NeedsFlag(path: String, found: String)
    case fortranOrder(path: String)
    case wrongRank(path: String, expected: Int, shape: [Int])
    case truncated(path: String, expectedBytes: Int, actualBytes: Int)
    case io(path: String, operation: String, reason: String)
    case notRegularFile(path: String, kind: String)

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason):
            return "\(path): cannot open (\(reason))"
        case let .notNpy(path):
            return "\(path): not a .npy file (it does not start with the \\x93NUMPY magic)"
        case let .unsupportedVersion(path, major, minor):
            return "\(path): .npy format version \(major).\(minor) is not supported (expected 1.0, 2.0 or 3.0)"
        case let .malformedHeader(path, detail):
            return "\(path): malformed .npy header (\(detail))"
        case let .wrongDType(path, found):
            return "\(path): dtype is '\(found)', expected '<f4' (float32), '<f2' (float16) or '<V2' (bfloat16 bits, read "
                + "as bf16 when asked); convert with arr.astype('<f4')"
        case let .bf16NeedsFlag(path, found):
            return "\(path): dtype is '\(found)', 2-byte elements whose descr does not say what they are (ml_dtypes stores bfloat16 so); "
                + "pass --dtype bf16 to read them as bf16"
        case let .fortranOrder(path):
            return "\(path): array is in Fortran order, expected C order; save np.ascontiguousarray(arr)"
        case let .wrongRank(path, expected, shape):
            return "\(path): shape \(NpyHeader.format(shape)) has \(shape.count) dimensions, expected \(expected)"
        case let .truncated(path, expectedBytes, actualBytes):
            return "\(path): truncated: the header promises \(expectedBytes) bytes of data, the file holds \(actualBytes)"
        case let .io(path, operation, reason):
            return "\(path): \(operation) failed (\(reason))"
        case let .notRegularFile(path, kind):
            return "\(path): is \(kind), not a regular file; expected a .npy file on disk"
        }
    }
}

/// What a .npy header says about the array.
public struct NpyHeader: Equatable, Sendable {
    public let shape: [Int]
    /// Byte offset of the first element.
    public let dataOffset: Int
    /// The element type's descr ('<f4' unless a reader asked for others, as cu_seqlens' '<i4'/'<i8').
    public var dtype = "<f4"

    public var elementCount: Int { shape.reduce(1, *) }

    public static func format(_ shape: [Int]) -> String {
        "(" + shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? ",)" : ")")
    }

    /// The bytes of a version 1.0 header (2.0 when the dict is too long for 1.0), padded so the
    /// data starts on a 64-byte boundary as NumPy does.
    public static func encode(shape: [Int], dtype: String = "<f4") -> [UInt8] {
        let dict = "{'descr': '\(dtype)', 'fortran_order': False, 'shape': \(format(shape)), }"
        for (major, lengthBytes) in [(1, 2), (2, 4)] {
            let preamble = 6 + 2 + lengthBytes
            let total = (preamble + dict.utf8.count + 1 + 63) / 64 * 64
            let headerLength = total - preamble
            if lengthBytes == 2 && headerLength > Int(UInt16.max) { continue }
            var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [UInt8(major), 0]
            for i in 0 ..< lengthBytes { bytes.append(UInt8((headerLength >> (8 * i)) & 0xFF)) }
            bytes += Array(dict.utf8)
            bytes += [UInt8](repeating: 0x20, count: headerLength - dict.utf8.count - 1) + [0x0A]
            return bytes
        }
        fatalError("unreachable: a 2.0 header holds any shape")
    }

    /// Parses and checks a header: `<f4`, C order, and a file long enough for its data.
    /// - Parameter prefix: the first bytes of the file (at least the whole header).
    /// - Parameter dtypes: the element types taken, with their sizes in bytes.
    static func parse(_ prefix: [UInt8], fileSize: Int, path: String, dtypes: [String: Int] = ["<f4": 4]) throws -> NpyHeader {
        guard prefix.count >= 10, prefix[0] == 0x93, Array(prefix[1 ..< 6]) == Array("NUMPY".utf8) else {
            throw NpyError.notNpy(path: path)
        }
        let major = Int(prefix[6]), minor = Int(prefix[7])
        let lengthBytes: Int
        switch (major, minor) {
        case (1, 0): lengthBytes = 2
        case (2, 0), (3, 0): lengthBytes = 4
        default: throw NpyError.unsupportedVersion(path: path, major: major, minor: minor)
        }
        guard prefix.count >= 8 + lengthBytes else { throw NpyError.malformedHeader(path: path, detail: "file ends inside the header") }
        var headerLength = 0
        for i in 0 ..< lengthBytes { headerLength |= Int(prefix[8 + i]) << (8 * i) }
        let start = 8 + lengthBytes
        guard prefix.count >= start + headerLength else {
            throw NpyError.malformedHeader(path: path, detail: "header length \(headerLength) runs past the end of the file")
        }
        guard let text = String(validating: prefix[start ..< start + headerLength], as: UTF8.self) else {
            throw NpyError.malformedHeader(path: path, detail: "header is not text")
        }
        var parser = HeaderDictParser(text: text)
        let dict: [String: HeaderDictParser.Value]
        do { dict = try parser.parseDict() } catch let message as HeaderDictParser.Failure {
            throw NpyError.malformedHeader(path: path, detail: message.detail)
        }
        guard case let .string(descr)? = dict["descr"] else {
            throw NpyError.malformedHeader(path: path, detail: "no 'descr' string")
        }
        guard case let .bool(fortran)? = dict["fortran_order"] else {
            throw NpyError.malformedHeader(path: path, detail: "no 'fortran_order' flag")
        }
        guard case let .tuple(shape)? = dict["shape"] else {
            throw NpyError.malformedHeader(path: path, detail: "no 'shape' tuple")
        }
        guard let elementSize = dtypes[descr] else { throw NpyError.wrongDType(path: path, found: descr) }
        guard !fortran else { throw NpyError.fortranOrder(path: path) }
        // A corrupt shape must not overflow the size arithmetic below.
        var bytes = elementSize
        for extent in shape {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: extent)
            guard !overflow else { throw NpyError.malformedHeader(path: path, detail: "shape \(format(shape)) is too large to be a real array") }
            bytes = product
        }
        let header = NpyHeader(shape: shape, dataOffset: start + headerLength, dtype: descr)
        let expected = bytes
        let actual = fileSize - header.dataOffset
        guard actual >= expected else { throw NpyError.truncated(path: path, expectedBytes: expected, actualBytes: max(0, actual)) }
        return header
    }
}

/// Just enough of Python's literal syntax for .npy headers: a dict of strings, booleans and
/// tuples of integers.
struct HeaderDictParser {
    enum Value: Equatable { case string(String), bool(Bool), tuple([Int]) }
    struct Failure: Error { let detail: String }

    let chars: [Character]
    var at = 0

    init(text: String) { chars = Array(text) }

    mutating func skipSpace() { while at < chars.count, chars[at].isWhitespace { at += 1 } }

    mutating func expect(_ c: Character) throws {
        skipSpace()
        guard at < chars.count, chars[at] == c else { throw Failure(detail: "expected '\(c)' at character \(at)") }
        at += 1
    }

    mutating func peek() -> Character? {
        skipSpace()
        return at < chars.count ? chars[at] : nil
    }

    mutating func parseString() throws -> String {
        skipSpace()
        guard at < chars.count, chars[at] == "'" || chars[at] == "\"" else { throw Failure(detail: "expected a string at character \(at)") }
        let quote = chars[at]
        at += 1
        let begin = at
        while at < chars.count, chars[at] != quote { at += 1 }
        guard at < chars.count else { throw Failure(detail: "unterminated string") }
        defer { at += 1 }
        return String(chars[begin ..< at])
    }

    mutating func parseInt() throws -> Int {
        skipSpace()
        let begin = at
        while at < chars.count, chars[at].isNumber { at += 1 }
        guard at > begin, let value = Int(String(chars[begin ..< at])) else { throw Failure(detail: "expected an integer at character \(begin)") }
        if at < chars.count, chars[at] == "L" { at += 1 }  // Python 2 longs
        return value
    }

    mutating func parseValue() throws -> Value {
        switch peek() {
        case "'", "\"":
            return .string(try parseString())
        case "(":
            at += 1
            var items: [Int] = []
            while peek() != ")" {
                items.append(try parseInt())
                if peek() == "," { at += 1 } else { break }
            }
            try expect(")")
            return .tuple(items)
        default:
            for (word, value) in [("True", true), ("False", false)] where chars[at...].starts(with: word) {
                at += word.count
                return .bool(value)
            }
            throw Failure(detail: "unexpected value at character \(at)")
        }
    }

    mutating func parseDict() throws -> [String: Value] {
        try expect("{")
        var dict: [String: Value] = [:]
        while peek() != "}" {
            let key = try parseString()
            try expect(":")
            dict[key] = try parseValue()
            if peek() == "," { at += 1 } else { break }
        }
        try expect("}")
        return dict
    }
}

/// An open .npy file for positioned reads or writes of float elements (float32, bfloat16 or
/// float16 in the file, float32 in memory), or for reading a file of integers.
public final class NpyFile {
    public let path: String
    public let header: NpyHeader
    /// What the file's elements are; nil for a file of integers (`readIntegers`).
    public let elementType: ElementType?
    private let descriptor: FileDescriptor

    private init(path: String, header: NpyHeader, elementType: ElementType?, descriptor: FileDescriptor) {
        self.path = path
        self.header = header
        self.elementType = elementType
        self.descriptor = descriptor
    }

    deinit { try? descriptor.close() }

    /// What `path` (links followed) is when it exists and is not a regular file ("a FIFO", ...);
    /// nil for a regular file or a missing one. Never opens it: opening a FIFO blocks.
    public static func irregularKind(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return nil
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFDIR: return "a directory"
        case S_IFSOCK: return "a socket"
        default: return "not a regular file"
        }
    }

    /// Opens an existing .npy of float32 or float16 (and, with `readingBF16`, of bfloat16 bits in a
    /// `<V2`, `<u2` or `<i2` file) for reading, and checks its header against the file's size.
    /// Refuses FIFOs and devices before opening them (a FIFO's open would block).
    public static func open(reading path: String, readingBF16: Bool = false) throws -> NpyFile {
        var dtypes = ["<f4": 4, "<f2": 2]
        if readingBF16 { for descr in ElementType.bf16Descrs { dtypes[descr] = 2 } }
        do {
            let (header, fd) = try openChecked(path, dtypes: dtypes)
            return NpyFile(path: path, header: header, elementType: ElementType.of(descr: header.dtype, readingBF16: readingBF16), descriptor: fd)
        } catch let NpyError.wrongDType(path, found) where ElementType.bf16Descrs.contains(found) {
            throw NpyError.bf16NeedsFlag(path: path, found: found)
        }
    }

    /// Opens an existing .npy whose elements are one of `dtypes` (descr: bytes per element), as
    /// cu_seqlens' integers, and checks its header against the file's size.
    public static func open(reading path: String, dtypes: [String: Int]) throws -> NpyFile {
        let (header, fd) = try openChecked(path, dtypes: dtypes)
        return NpyFile(path: path, header: header, elementType: nil, descriptor: fd)
    }

    /// The checked header and an open descriptor of `path`.
    private static func openChecked(_ path: String, dtypes: [String: Int]) throws -> (NpyHeader, FileDescriptor) {
        if let kind = irregularKind(path) { throw NpyError.notRegularFile(path: path, kind: kind) }
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readOnly)
        } catch {
            throw NpyError.cannotOpen(path: path, reason: "\(error)")
        }
        do {
            let size = try Int(fd.seek(offset: 0, from: .end))
            var prefix = [UInt8](repeating: 0, count: min(size, 1 << 16))
            let got = try prefix.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: 0, into: $0) }
            guard got == prefix.count else { throw NpyError.io(path: path, operation: "read header", reason: "read \(got) of \(prefix.count) bytes") }
            return (try NpyHeader.parse(prefix, fileSize: size, path: path, dtypes: dtypes), fd)
        } catch {
            try? fd.close()
            if error is NpyError { throw error }
            throw NpyError.io(path: path, operation: "read header", reason: "\(error)")
        }
    }

    /// Creates (or truncates) `path` with a header for `shape` of `elementType` and room for all its
    /// data. One process creates the file; writers then open it with `open(writing:)`.
    @discardableResult
    public static func create(_ path: String, shape: [Int], elementType: ElementType = .f32) throws -> NpyHeader {
        if let kind = irregularKind(path) { throw NpyError.notRegularFile(path: path, kind: kind) }
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw NpyError.cannotOpen(path: path, reason: "\(error)")
        }
        defer { try? fd.close() }
        let bytes = NpyHeader.encode(shape: shape, dtype: elementType.descr)
        let header = NpyHeader(shape: shape, dataOffset: bytes.count, dtype: elementType.descr)
        do {
            _ = try bytes.withUnsafeBytes { try fd.writeAll(toAbsoluteOffset: 0, $0) }
        } catch {
            throw NpyError.io(path: path, operation: "write header", reason: "\(error)")
        }
        do {
            try fd.resize(to: Int64(header.dataOffset + header.elementCount * elementType.byteSize))
        } catch {
            throw NpyError.io(path: path, operation: "resize", reason: "\(error)")
        }
        return header
    }

    /// Opens a file made by `create` for positioned writes.
    public static func open(writing path: String) throws -> NpyFile {
        let reader = try open(reading: path, readingBF16: true)
        do {
            return NpyFile(path: path, header: reader.header, elementType: reader.elementType, descriptor: try FileDescriptor.open(FilePath(path), .writeOnly))
        } catch {
            throw NpyError.cannotOpen(path: path, reason: "\(error)")
        }
    }

    /// Reads `count` elements starting at element `offset`, widened to float32. A 2-byte type is
    /// read into the upper half of `buffer`'s bytes and widened there, front to back.
    public func read(into buffer: UnsafeMutablePointer<Float>, elementOffset offset: Int, count: Int) throws {
        guard let elementType else { preconditionFailure("\(path) holds integers: read it with readIntegers") }
        try checkRange(offset: offset, count: count, operation: "read")
        let size = elementType.byteSize
        let raw = UnsafeMutableRawPointer(buffer) + count * (4 - size)
        try readBytes(UnsafeMutableRawBufferPointer(start: raw, count: count * size), at: offset * size)
        elementType.widen(raw, into: buffer, count: count)
    }

    /// Reads `count` elements of a bf16 or f16 file starting at element `offset`, as their bits
    /// (little-endian, as the file and seqpar's 16-bit storage hold them).
    public func readBits(into buffer: UnsafeMutablePointer<UInt16>, elementOffset offset: Int, count: Int) throws {
        guard let elementType, elementType.byteSize == 2 else { preconditionFailure("\(path) does not hold 16-bit floats") }
        try checkRange(offset: offset, count: count, operation: "read")
        try readBytes(UnsafeMutableRawBufferPointer(start: buffer, count: count * 2), at: offset * 2)
    }

    /// Every element of an int32 or int64 file (opened with those dtypes), as Int.
    public func readIntegers() throws -> [Int] {
        precondition(header.dtype == "<i4" || header.dtype == "<i8", "readIntegers reads '<i4' or '<i8' files")
        func read<T: FixedWidthInteger>(_: T.Type) throws -> [Int] {
            var values = [T](repeating: 0, count: header.elementCount)
            try values.withUnsafeMutableBytes { try readBytes($0, at: 0) }
            return values.map { Int(T(littleEndian: $0)) }
        }
        return header.dtype == "<i8" ? try read(Int64.self) : try read(Int32.self)
    }

    /// Writes `count` float32 values starting at element `offset`, rounded to the file's type
    /// (to nearest even) in chunks of 64 Ki elements.
    public func write(from buffer: UnsafePointer<Float>, elementOffset offset: Int, count: Int) throws {
        guard let elementType else { preconditionFailure("\(path) holds integers") }
        try checkRange(offset: offset, count: count, operation: "write")
        let size = elementType.byteSize
        do {
            guard elementType != .f32 else {
                _ = try descriptor.writeAll(toAbsoluteOffset: Int64(header.dataOffset + offset * 4), UnsafeRawBufferPointer(start: buffer, count: count * 4))
                return
            }
            let chunk = 1 << 16
            let narrow = UnsafeMutableRawBufferPointer.allocate(byteCount: min(count, chunk) * size, alignment: 16)
            defer { narrow.deallocate() }
            for first in stride(from: 0, to: count, by: chunk) {
                let n = min(chunk, count - first)
                elementType.narrow(buffer + first, into: narrow.baseAddress!, count: n)
                _ = try descriptor.writeAll(
                    toAbsoluteOffset: Int64(header.dataOffset + (offset + first) * size), UnsafeRawBufferPointer(rebasing: narrow[0 ..< n * size]))
            }
        } catch {
            throw NpyError.io(path: path, operation: "write", reason: "\(error)")
        }
    }

    private func checkRange(offset: Int, count: Int, operation: String) throws {
        guard offset >= 0, count >= 0, offset + count <= header.elementCount else {
            throw NpyError.io(
                path: path, operation: operation,
                reason: "elements \(offset)..<\(offset + count) lie outside its \(header.elementCount) elements")
        }
    }

    /// Reads every byte of `bytes` from byte `start` of the data: a read may return less than asked.
    private func readBytes(_ bytes: UnsafeMutableRawBufferPointer, at start: Int) throws {
        var done = 0
        while done < bytes.count {
            let n: Int
            do {
                n = try descriptor.read(fromAbsoluteOffset: Int64(header.dataOffset + start + done), into: UnsafeMutableRawBufferPointer(rebasing: bytes[done...]))
            } catch {
                throw NpyError.io(path: path, operation: "read", reason: "\(error)")
            }
            guard n > 0 else { throw NpyError.io(path: path, operation: "read", reason: "unexpected end of file") }
            done += n
        }
    }
}

extension NpyFile {
    /// A whole file as a shape and values (small files: tests and tools).
    public static func load(_ path: String, readingBF16: Bool = false) throws -> (shape: [Int], values: [Float]) {
        let file = try open(reading: path, readingBF16: readingBF16)
        var values = [Float](repeating: 0, count: file.header.elementCount)
        try values.withUnsafeMutableBufferPointer { buffer in
            if let base = buffer.baseAddress { try file.read(into: base, elementOffset: 0, count: buffer.count) }
        }
        return (file.header.shape, values)
    }

    /// Writes a whole array, rounded to `elementType`.
    public static func save(_ path: String, shape: [Int], values: [Float], elementType: ElementType = .f32) throws {
        precondition(shape.reduce(1, *) == values.count, "shape does not match value count")
        try create(path, shape: shape, elementType: elementType)
        let file = try open(writing: path)
        try values.withUnsafeBufferPointer { buffer in
            if let base = buffer.baseAddress { try file.write(from: base, elementOffset: 0, count: buffer.count) }
        }
    }
}
