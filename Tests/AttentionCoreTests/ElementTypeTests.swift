// bf16 and f16 in memory and in .npy files: rounding to nearest even, exact widening, the
// in-place read of 2-byte elements at any offset, the descrs taken and refused, and (where a
// Python with ml_dtypes exists) the files ml_dtypes and NumPy write and read.

import FileFormats
import Foundation
import SeqparTestSupport
import Testing

@Suite("element types")
struct ElementTypeTests {
    @Test("bf16 rounds to nearest, ties to even; NaN stays NaN; widening is exact")
    func bf16Rounding() {
        let ulp: Float = 1.0 / 128  // bf16 has 8 significant bits: 1 + 2^-7 is the next after 1
        #expect(ElementType.bf16.rounded(1 + ulp / 2) == 1, "a tie rounds to the even 1")
        #expect(ElementType.bf16.rounded(1 + 3 * ulp / 2) == 1 + 2 * ulp, "a tie rounds to the even 1 + 2^-6")
        #expect(ElementType.bf16.rounded(1 + ulp / 2 + ulp / 64) == 1 + ulp, "above the tie rounds up")
        #expect(ElementType.bf16.rounded(-(1 + ulp / 4)) == -1)
        #expect(ElementType.bf16.rounded(.greatestFiniteMagnitude) == .infinity, "past bf16's largest finite, as PyTorch rounds")
        #expect(ElementType.bf16.rounded(.infinity) == .infinity)
        #expect(ElementType.bf16.rounded(.nan).isNaN)
        #expect(ElementType.bf16.rounded(Float(bitPattern: 0x7F80_0001)).isNaN, "a signalling NaN whose payload sits in the low bits stays NaN")
        var generator = SeededGenerator(state: 7)
        for _ in 0 ..< 10_000 {
            let bits = UInt16(truncatingIfNeeded: generator.next())
            let x = ElementType.float(bf16: bits)
            guard x.isFinite else { continue }
            #expect(ElementType.bf16(x) == bits, "bf16 \(bits) does not survive widening and rounding")
            #expect(ElementType.bf16.rounded(x) == x)
        }
        // Against a plain float64 rounding: the bf16 neighbours of x, and the nearer (even on a tie).
        for _ in 0 ..< 10_000 {
            let x = Float(bitPattern: UInt32(truncatingIfNeeded: generator.next()) & 0xBFFF_FFFF)  // finite, |x| < 2, any sign
            let down = Float(bitPattern: x.bitPattern & 0xFFFF_0000), up = Float(bitPattern: (x.bitPattern & 0xFFFF_0000) + 0x1_0000)
            let (dd, du) = (abs(Double(x) - Double(down)), abs(Double(up) - Double(x)))
            let expected = dd < du ? down : du < dd ? up : (down.bitPattern & 0x1_0000 == 0 ? down : up)
            #expect(ElementType.bf16.rounded(x) == expected, "\(x)")
        }
    }

    @Test("f16 rounds as Float16 does; beyond 65504 is infinity")
    func f16Rounding() {
        #expect(ElementType.f16.rounded(1 + 1.0 / 2048) == 1, "a tie rounds to the even 1")
        #expect(ElementType.f16.rounded(65504) == 65504)
        #expect(ElementType.f16.rounded(70000) == .infinity)
        #expect(ElementType.f16.rounded(1e-8) == 0)
        #expect(ElementType.f32.rounded(1 + .ulpOfOne) == 1 + .ulpOfOne, "f32 is left as it is")
    }

    @Test("the descrs: '<f4', '<f2', and '<V2', '<u2', '<i2' only as bf16 when asked", arguments: ElementType.allCases)
    func descrs(_ type: ElementType) {
        #expect(ElementType.of(descr: type.descr, readingBF16: type == .bf16) == type)
        for descr in ElementType.bf16Descrs {
            #expect(ElementType.of(descr: descr, readingBF16: false) == nil)
            #expect(ElementType.of(descr: descr, readingBF16: true) == .bf16)
        }
        #expect(ElementType.of(descr: "<f8", readingBF16: true) == nil)
    }

    @Test("files round trip in every type: rounded on write, exact on read, at any offset and count", arguments: ElementType.allCases)
    func roundTrip(_ type: ElementType) throws {
        try withTemporaryPath { path in
            var generator = SeededGenerator(state: 3)
            let values = (0 ..< 3 * 5 * 7).map { _ in Float(Int64(bitPattern: generator.next() % 2001) - 1000) / 37 }
            try NpyFile.save(path, shape: [3, 5, 7], values: values, elementType: type)
            let file = try NpyFile.open(reading: path, readingBF16: type == .bf16)
            #expect(file.header.dtype == type.descr && file.elementType == type)
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int == file.header.dataOffset + values.count * type.byteSize)
            let rounded = values.map(type.rounded)
            #expect(try NpyFile.load(path, readingBF16: type == .bf16).values == rounded)
            // Reads of every odd offset and length, into a buffer with room for just the count.
            for (offset, count) in [(0, 1), (1, 2), (3, 17), (104, 1), (0, 105), (50, 55)] {
                let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
                defer { buffer.deallocate() }
                try file.read(into: buffer, elementOffset: offset, count: count)
                #expect(Array(UnsafeBufferPointer(start: buffer, count: count)) == Array(rounded[offset ..< offset + count]), "\(offset), \(count)")
            }
        }
    }

    @Test("a '<V2' file without --dtype bf16 is refused with a message naming the flag; '<u2' and '<i2' read as bf16 with it")
    func untypedBF16() throws {
        for descr in ["<V2", "<u2", "<i2"] {
            try withTemporaryPath { path in
                let bits: [UInt16] = [0x3F80, 0xC000, 0x3E00, 0x0000]  // 1, -2, 0.125, 0
                var bytes = NpyHeader.encode(shape: [4], dtype: descr)
                for b in bits { bytes += [UInt8(b & 0xFF), UInt8(b >> 8)] }
                try Data(bytes).write(to: URL(fileURLWithPath: path))
                #expect(throws: NpyError.bf16NeedsFlag(path: path, found: descr)) { try NpyFile.load(path) }
                #expect("\(NpyError.bf16NeedsFlag(path: path, found: descr))".contains("--dtype bf16"))
                #expect(try NpyFile.load(path, readingBF16: true).values == [1, -2, 0.125, 0])
            }
        }
    }
}

/// What ml_dtypes (bfloat16, as JAX and NumPy users store it) and NumPy (float16) write, seqpar
/// reads, and the other way round. Launch/test makes a Python with both in .build-python; where
/// none is found the test says it is skipped.
@Suite("ml_dtypes interoperability")
struct MLDtypesInteropTests {
    /// A Python with numpy and ml_dtypes: $SEQPAR_TEST_PYTHON, the project's .build-python, or python3.
    static let python: String? = {
        let candidates: [String?] = [
            ProcessInfo.processInfo.environment["SEQPAR_TEST_PYTHON"], packageRoot.appendingPathComponent(".build-python/bin/python").path, "python3",
        ]
        return candidates.compactMap { $0 }.first { candidate in
            let result = try? runToEnd(URL(fileURLWithPath: "/usr/bin/env"), [candidate, "-c", "import numpy, ml_dtypes"], timeout: 60)
            return result?.status == 0
        }
    }()

    static func run(_ script: String, _ arguments: [String]) throws -> Int32 {
        try runToEnd(URL(fileURLWithPath: "/usr/bin/env"), [python!, "-c", script] + arguments, timeout: 60).status
    }

    @Test(
        "bf16 '<V2' and f16 '<f2' files: ml_dtypes' and NumPy's read by seqpar, seqpar's read by them, value for value",
        .enabled(if: python != nil, "needs a Python with numpy and ml_dtypes (Launch/test makes .build-python)"))
    func roundTrips() throws {
        let dir = try ScratchDirectory()
        let theirs = """
            import sys, numpy as np, ml_dtypes
            a = ((np.arange(60, dtype=np.float32).reshape(3, 4, 5) - 29) / 7).astype(np.float32)
            np.save(sys.argv[1], a.astype(ml_dtypes.bfloat16))
            np.save(sys.argv[2], a.astype(np.float16))
            """
        try #require(try Self.run(theirs, [dir.path("b.npy"), dir.path("h.npy")]) == 0)
        let original = (0 ..< 60).map { (Float($0) - 29) / 7 }
        #expect(try NpyFile.load(dir.path("b.npy"), readingBF16: true).values == original.map(ElementType.bf16.rounded))
        #expect(try NpyFile.load(dir.path("h.npy")).values == original.map(ElementType.f16.rounded))
        try NpyFile.save(dir.path("ours-b.npy"), shape: [3, 4, 5], values: original, elementType: .bf16)
        try NpyFile.save(dir.path("ours-h.npy"), shape: [3, 4, 5], values: original, elementType: .f16)
        let ours = """
            import sys, numpy as np, ml_dtypes
            a = ((np.arange(60, dtype=np.float32).reshape(3, 4, 5) - 29) / 7).astype(np.float32)
            b = np.load(sys.argv[1]).view(ml_dtypes.bfloat16)
            h = np.load(sys.argv[2])
            ok = b.shape == (3, 4, 5) and h.dtype == np.float16 and h.shape == (3, 4, 5) \\
                and (b == a.astype(ml_dtypes.bfloat16)).all() and (h == a.astype(np.float16)).all()
            sys.exit(0 if ok else 1)
            """
        #expect(try Self.run(ours, [dir.path("ours-b.npy"), dir.path("ours-h.npy")]) == 0, "ml_dtypes or NumPy misread seqpar's files")
    }
}
