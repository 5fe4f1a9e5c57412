// Inputs the tests write: random float32 tensors through AttentionCore's NpyFile, and .npy files
// with hand-written headers for the bad-input cases (wrong dtype, Fortran order, ...), which
// NpyFile itself refuses to produce.

import AttentionCore
import FileFormats
import Foundation
@_exported import SeqparTestSupport

func randomValues(_ count: Int, spread: Float, generator: inout SeededGenerator) -> [Float] {
    (0 ..< count).map { _ in Float.random(in: -spread ... spread, using: &generator) }
}

/// A valid float32 .npy of random values.
@discardableResult
func writeRandomNpy(_ path: String, shape: [Int], spread: Float = 1, seed: UInt64) throws -> [Float] {
    var generator = SeededGenerator(state: seed)
    let values = randomValues(shape.reduce(1, *), spread: spread, generator: &generator)
    try NpyFile.save(path, shape: shape, values: values)
    return values
}

/// The bytes of a .npy file written by hand: magic, version, little-endian header length, the
/// header dict padded with spaces to a 64-byte boundary and ended by a newline, then `data`.
func handWrittenNpy(
    descr: String = "<f4", fortranOrder: Bool = false, shape: [Int], data: [UInt8],
    version: (major: UInt8, minor: UInt8) = (1, 0), dict: String? = nil
) -> [UInt8] {
    let shapeText = "(" + shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? ",)" : ")")
    let text = dict ?? "{'descr': '\(descr)', 'fortran_order': \(fortranOrder ? "True" : "False"), 'shape': \(shapeText), }"
    let lengthBytes = version.major == 1 ? 2 : 4
    let preamble = 6 + 2 + lengthBytes
    let total = (preamble + text.utf8.count + 1 + 63) / 64 * 64
    let headerLength = total - preamble
    var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version.major, version.minor]
    for i in 0 ..< lengthBytes { bytes.append(UInt8((headerLength >> (8 * i)) & 0xFF)) }
    bytes += Array(text.utf8) + [UInt8](repeating: 0x20, count: headerLength - text.utf8.count - 1) + [0x0A]
    return bytes + data
}

/// `count` float32 or float64 values as little-endian bytes.
func littleEndianBytes(floats count: Int, width: Int, seed: UInt64) -> [UInt8] {
    var generator = SeededGenerator(state: seed)
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count * width)
    for _ in 0 ..< count {
        let x = Float.random(in: -1 ... 1, using: &generator)
        if width == 8 {
            withUnsafeBytes(of: Double(x).bitPattern.littleEndian) { bytes += $0 }
        } else {
            withUnsafeBytes(of: x.bitPattern.littleEndian) { bytes += $0 }
        }
    }
    return bytes
}

func writeBytes(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Max |a - b| over two equally long arrays (infinite when the counts differ or a value is NaN).
func maxAbsDifference<A: BinaryFloatingPoint, B: BinaryFloatingPoint>(_ a: [A], _ b: [B]) -> Double {
    guard a.count == b.count else { return .infinity }
    var worst = 0.0
    for i in a.indices {
        let x = Double(a[i]), y = Double(b[i])
        if x == y { continue }  // equal infinities included
        let d = abs(x - y)
        if d.isNaN { return .infinity }
        worst = max(worst, d)
    }
    return worst
}

/// Max |a - b| / max |b|: the relative measure `seqpar verify` reports.
func maxRelDifference<A: BinaryFloatingPoint, B: BinaryFloatingPoint>(_ a: [A], _ b: [B]) -> Double {
    let scale = b.reduce(0.0) { max($0, abs(Double($1)).isFinite ? abs(Double($1)) : $0) }
    return maxAbsDifference(a, b) / max(scale, .leastNormalMagnitude)
}
