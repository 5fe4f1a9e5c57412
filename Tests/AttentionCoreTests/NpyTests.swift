// .npy files: round trips, the header NumPy expects (version 1.0, data 64-byte aligned), headers
// of versions 2.0 and 3.0 and of other writers, positioned reads and writes, and a specific error
// naming the file for every kind of bad input. Version 2.0/3.0 files are built byte by byte here,
// so the suite does not depend on Python; a NumPy interoperability test runs where NumPy exists.

import AttentionCore
import FileFormats
import Foundation
import SeqparTestSupport
import Testing

/// Raw .npy bytes, built the way the format document describes them.
enum NpyBytes {
    static let magic: [UInt8] = [0x93] + Array("NUMPY".utf8)

    /// Magic, version, little-endian header length, the dict, space padding and a newline, with
    /// the data offset a multiple of `alignment`.
    static func header(major: UInt8 = 1, minor: UInt8 = 0, dict: String, alignment: Int = 64) -> [UInt8] {
        let lengthBytes = major == 1 ? 2 : 4
        let preamble = 8 + lengthBytes
        let total = (preamble + dict.utf8.count + 1 + alignment - 1) / alignment * alignment
        let length = total - preamble
        var bytes = magic + [major, minor]
        for i in 0 ..< lengthBytes { bytes.append(UInt8((length >> (8 * i)) & 0xFF)) }
        bytes += Array(dict.utf8) + [UInt8](repeating: 0x20, count: length - dict.utf8.count - 1) + [0x0A]
        return bytes
    }

    static func dict(descr: String = "<f4", fortran: Bool = false, shape: String) -> String {
        "{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(shape), }"
    }

    static func littleEndian(_ values: [Float]) -> [UInt8] {
        values.flatMap { value in withUnsafeBytes(of: value.bitPattern.littleEndian, Array.init) }
    }

    static func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }
}

@Suite("NumPy .npy files")
struct NpyTests {
    /// Values whose bits must survive: signed zeros, infinities, NaN, subnormals, ordinary numbers.
    static func values(_ count: Int) -> [Float] {
        let specials: [Float] = [-0.0, 0, .infinity, -.infinity, .nan, .leastNonzeroMagnitude, -.greatestFiniteMagnitude, 1]
        return (0 ..< count).map { i in i < specials.count ? specials[i] : SyntheticInput.value(seed: 5, tensor: .value, index: i) * 1000 }
    }

    /// The NpyError a load throws (failing the test if it throws anything else or nothing).
    static func loadError(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> NpyError {
        let error = try #require(throws: NpyError.self, sourceLocation: sourceLocation) { _ = try NpyFile.load(path) }
        #expect(error.description.contains(path), "the message must name the file: \(error)", sourceLocation: sourceLocation)
        return error
    }

    @Test("save then load gives back shape and bits", arguments: [[7, 3, 5], [1, 1, 1], [0, 2, 2], [5], [], [3, 40_000]])
    func roundTrip(_ shape: [Int]) throws {
        let values = Self.values(shape.reduce(1, *))
        try withTemporaryPath { path in
            try NpyFile.save(path, shape: shape, values: values)
            let loaded = try NpyFile.load(path)
            #expect(loaded.shape == shape)
            #expect(loaded.values.map(\.bitPattern) == values.map(\.bitPattern))
            let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int
            #expect(size == NpyHeader.encode(shape: shape).count + 4 * values.count)
        }
    }

    @Test(
        "the header is version 1.0, ends in a newline and puts the data on a 64-byte boundary",
        arguments: [[7, 3, 5], [1], [], [4096, 32, 128], [2, 3, 4, 5, 6, 7, 8, 9]])
    func headerLayout(_ shape: [Int]) throws {
        let bytes = NpyHeader.encode(shape: shape)
        #expect(Array(bytes[0 ..< 6]) == NpyBytes.magic)
        #expect(bytes[6] == 1 && bytes[7] == 0)
        #expect(bytes.count % 64 == 0)
        #expect(Int(bytes[8]) | Int(bytes[9]) << 8 == bytes.count - 10)
        #expect(bytes.last == 0x0A)
        let text = try #require(String(bytes: bytes[10...], encoding: .ascii))
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        #expect(text.hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"))
        // And the reader agrees about where the data starts.
        try withTemporaryPath { path in
            try NpyFile.create(path, shape: shape)
            let file = try NpyFile.open(reading: path)
            #expect(file.header.shape == shape && file.header.dataOffset == bytes.count)
            #expect(file.header.elementCount == shape.reduce(1, *))
        }
    }

    @Test(
        "version 2.0 and 3.0 headers and other writers' spellings are read",
        arguments: [
            (UInt8(2), 64, NpyBytes.dict(shape: "(4, 3)")),
            (3, 64, NpyBytes.dict(shape: "(4, 3)")),
            (1, 16, NpyBytes.dict(shape: "(4, 3)")),  // old NumPy: 16-byte alignment
            (1, 64, "{\"shape\": (4,3), \"fortran_order\": False, \"descr\": \"<f4\"}"),  // other order and quotes
            (1, 64, "{'descr': '<f4', 'fortran_order': False, 'shape': (4L, 3L), }"),
        ])  // Python 2 longs
    func otherHeaders(major: UInt8, alignment: Int, dict: String) throws {
        let values = Self.values(12)
        try withTemporaryPath { path in
            try NpyBytes.write(NpyBytes.header(major: major, dict: dict, alignment: alignment) + NpyBytes.littleEndian(values), to: path)
            let loaded = try NpyFile.load(path)
            #expect(loaded.shape == [4, 3])
            #expect(loaded.values.map(\.bitPattern) == values.map(\.bitPattern))
        }
    }

    @Test("positioned writes and reads touch only their rows")
    func positioned() throws {
        let (rows, width) = (5, 6)
        let values = (0 ..< rows * width).map { Float($0) - 11.5 }
        try withTemporaryPath { path in
            try NpyFile.create(path, shape: [rows, width])
            let writer = try NpyFile.open(writing: path)
            for row in [3, 0, 4, 1, 2] {  // as ranks finishing in any order would
                try values.withUnsafeBufferPointer { buffer in
                    try writer.write(from: buffer.baseAddress! + row * width, elementOffset: row * width, count: width)
                }
            }
            #expect(try NpyFile.load(path).values == values)
            let reader = try NpyFile.open(reading: path)
            var slice = [Float](repeating: .nan, count: 2 * width)
            try slice.withUnsafeMutableBufferPointer { try reader.read(into: $0.baseAddress!, elementOffset: 2 * width, count: 2 * width) }
            #expect(slice == Array(values[2 * width ..< 4 * width]))
        }
    }

    @Test("a fresh file reads as zeros")
    func createdFileIsZero() throws {
        try withTemporaryPath { path in
            try NpyFile.create(path, shape: [3, 4])
            #expect(try NpyFile.load(path).values == [Float](repeating: 0, count: 12))
        }
    }

    // MARK: bad input: each a specific error that names the file

    @Test("random bytes and an empty file are not .npy")
    func notNpy() throws {
        var state: UInt64 = 0x1234_5678
        let random: [UInt8] = (0 ..< 300).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        for bytes in [random.first == 0x93 ? [0] + random : random, [], Array(NpyBytes.magic.prefix(4)), Array("NUMPY-ish text file\n".utf8)] {
            try withTemporaryPath { path in
                try NpyBytes.write(bytes, to: path)
                #expect(try Self.loadError(path) == .notNpy(path: path), "\(bytes.count) bytes")
            }
        }
    }

    @Test("an unsupported version", arguments: [(UInt8(4), UInt8(0)), (1, 1), (0, 9)])
    func unsupportedVersion(major: UInt8, minor: UInt8) throws {
        try withTemporaryPath { path in
            try NpyBytes.write(NpyBytes.header(major: major, minor: minor, dict: NpyBytes.dict(shape: "(2,)")) + NpyBytes.littleEndian([1, 2]), to: path)
            #expect(try Self.loadError(path) == .unsupportedVersion(path: path, major: Int(major), minor: Int(minor)))
        }
    }

    @Test("a dtype other than little-endian float32, float16 or bfloat16", arguments: ["<f8", ">f4", "<i4", "|u1", ">f2", "<c8"])
    func wrongDType(_ descr: String) throws {
        try withTemporaryPath { path in
            try NpyBytes.write(NpyBytes.header(dict: NpyBytes.dict(descr: descr, shape: "(2, 2)")) + [UInt8](repeating: 0, count: 64), to: path)
            let error = try Self.loadError(path)
            #expect(error == .wrongDType(path: path, found: descr))
            #expect(error.description.contains(descr))
        }
    }

    @Test("Fortran order")
    func fortranOrder() throws {
        try withTemporaryPath { path in
            try NpyBytes.write(NpyBytes.header(dict: NpyBytes.dict(fortran: true, shape: "(2, 3)")) + NpyBytes.littleEndian(Self.values(6)), to: path)
            #expect(try Self.loadError(path) == .fortranOrder(path: path))
        }
    }

    @Test("data shorter than the header promises")
    func truncated() throws {
        try withTemporaryPath { path in
            try NpyBytes.write(NpyBytes.header(dict: NpyBytes.dict(shape: "(4, 4)")) + [UInt8](repeating: 0, count: 40), to: path)
            #expect(try Self.loadError(path) == .truncated(path: path, expectedBytes: 64, actualBytes: 40))
        }
        // A file cut inside its header.
        try withTemporaryPath { path in
            try NpyBytes.write(Array(NpyBytes.header(dict: NpyBytes.dict(shape: "(4, 4)")).prefix(30)), to: path)
            guard case .malformedHeader(let named, _) = try Self.loadError(path) else {
                Issue.record("a header cut short should be reported as malformed")
                return
            }
            #expect(named == path)
        }
    }

    @Test(
        "a header that is not the dict NumPy writes",
        arguments: [
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'shape': (2,)}",
            "{'fortran_order': False, 'shape': (2,)}",
            "['<f4', False, (2,)]",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            "{'descr: '<f4', 'fortran_order': False, 'shape': (2,), }",
        ])
    func malformedHeader(_ dict: String) throws {
        try withTemporaryPath { path in
            try NpyBytes.write(NpyBytes.header(dict: dict) + NpyBytes.littleEndian([1, 2]), to: path)
            guard case .malformedHeader(let named, _) = try Self.loadError(path) else {
                Issue.record("expected malformedHeader for \(dict)")
                return
            }
            #expect(named == path)
        }
    }

    @Test("a shape whose element count overflows is an error, not a crash")
    func overflowingShape() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-test-\(UUID().uuidString).npy")
        defer { try? FileManager.default.removeItem(at: url) }
        try NpyBytes.write(NpyBytes.header(dict: NpyBytes.dict(shape: "(4611686018427387904, 4)")), to: url.path)
        guard case .malformedHeader(let path, let detail) = try Self.loadError(url.path) else {
            Issue.record("expected malformedHeader for an overflowing shape")
            return
        }
        #expect(path == url.path && detail.contains("too large"))
    }

    @Test("a path that does not exist cannot be opened, for reading or writing")
    func cannotOpen() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-missing-\(UUID().uuidString).npy").path
        guard case .cannotOpen(let named, let reason) = try Self.loadError(path) else {
            Issue.record("expected cannotOpen")
            return
        }
        #expect(named == path && !reason.isEmpty)
        let inMissingDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("seqpar-missing-\(UUID().uuidString)/out.npy").path
        let error = try #require(throws: NpyError.self) { try NpyFile.create(inMissingDirectory, shape: [2]) }
        guard case .cannotOpen(inMissingDirectory, _) = error else {
            Issue.record("expected cannotOpen, got \(error)")
            return
        }
        #expect(error.description.contains(inMissingDirectory))
    }

    @Test("a directory is reported, not crashed on")
    func directory() throws {
        let path = FileManager.default.temporaryDirectory.path
        _ = try Self.loadError(path)
    }
}

/// Reading what NumPy writes and writing what NumPy reads. The suite does not need Python (the
/// byte-level tests above pin the format); this checks against the real thing where it exists,
/// and is reported as skipped — never silently passed — where python3 with numpy is missing.
@Suite("NumPy interoperability")
struct NumPyInteropTests {
    /// python3's exit status for `script` (-1 when it cannot start or runs past a minute).
    static func python(_ script: String, _ arguments: [String]) -> Int32 {
        guard let result = try? runToEnd(URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", script] + arguments, timeout: 60), !result.timedOut else {
            return -1
        }
        return result.status
    }

    static let numpyAvailable = python("import numpy", []) == 0

    @Test(
        "files written by NumPy load; NumPy loads what we write",
        .enabled(if: numpyAvailable, "needs python3 with numpy on PATH; the byte-level .npy tests cover the format without it"))
    func numpy() throws {
        try withTemporaryPath("-c.npy") { plain in
            try withTemporaryPath("-v2.npy") { version2 in
                try withTemporaryPath("-f8.npy") { double in
                    try withTemporaryPath("-fortran.npy") { fortran in
                        try withTemporaryPath("-be.npy") { bigEndian in
                            let script = """
                                import sys, numpy as np
                                a = (np.arange(30, dtype='<f4').reshape(2, 3, 5) - 7) / 3
                                np.save(sys.argv[1], a)
                                with open(sys.argv[2], 'wb') as f:
                                    np.lib.format.write_array(f, a, version=(2, 0))
                                np.save(sys.argv[3], a.astype('<f8'))
                                np.save(sys.argv[4], np.asfortranarray(a))
                                np.save(sys.argv[5], a.astype('>f4'))
                                """
                            try #require(Self.python(script, [plain, version2, double, fortran, bigEndian]) == 0)
                            let expected = (0 ..< 30).map { (Float($0) - 7) / 3 }
                            for path in [plain, version2] {
                                let loaded = try NpyFile.load(path)
                                #expect(loaded.shape == [2, 3, 5] && loaded.values == expected, "\(path)")
                            }
                            #expect(throws: NpyError.wrongDType(path: double, found: "<f8")) { try NpyFile.load(double) }
                            #expect(throws: NpyError.fortranOrder(path: fortran)) { try NpyFile.load(fortran) }
                            #expect(throws: NpyError.wrongDType(path: bigEndian, found: ">f4")) { try NpyFile.load(bigEndian) }
                        }
                    }
                }
            }
        }
        try withTemporaryPath { path in
            try NpyFile.save(path, shape: [4, 3], values: (0 ..< 12).map { Float($0) * 0.25 - 1 })
            let check = """
                import sys, numpy as np
                a = np.load(sys.argv[1])
                ok = a.dtype == np.float32 and a.shape == (4, 3) and a.flags.c_contiguous \\
                    and (a == np.arange(12, dtype=np.float32).reshape(4, 3) * 0.25 - 1).all()
                sys.exit(0 if ok else 1)
                """
            #expect(Self.python(check, [path]) == 0, "numpy rejected or misread \(path)")
        }
    }
}
