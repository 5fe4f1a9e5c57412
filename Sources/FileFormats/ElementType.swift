// The element types of Q, K, V, O and the gradients in files: float32, bfloat16 and float16, and
// the conversions between them and float32. Rounding to bf16 and f16 is to nearest, ties to even,
// as PyTorch, JAX and ml_dtypes round; NaN stays NaN, and a value beyond f16's range becomes
// infinity (which the input check then refuses, naming the file).

/// The element type of the tensors in files (`--dtype`). LSE is always float32.
public enum ElementType: String, CaseIterable, Sendable, CustomStringConvertible {
    case f32, bf16, f16

    /// Bytes per element.
    public var byteSize: Int { self == .f32 ? 4 : 2 }

    /// The .npy `descr` written: bf16 as `<V2`, how ml_dtypes (and so NumPy and JAX users) store it.
    public var descr: String {
        switch self {
        case .f32: "<f4"
        case .bf16: "<V2"
        case .f16: "<f2"
        }
    }

    public var description: String { rawValue }

    /// What the type is called in messages: "bf16 (bfloat16)".
    public var longName: String {
        switch self {
        case .f32: "f32 (float32)"
        case .bf16: "bf16 (bfloat16)"
        case .f16: "f16 (float16)"
        }
    }

    /// The descrs that hold bf16 bits: `<V2` (ml_dtypes), and raw 16-bit integers.
    public static let bf16Descrs: Set<String> = ["<V2", "<u2", "<i2"]

    /// The type a float file's `descr` holds: `<f4`, `<f2`, or, when `bf16` is asked for, a `<V2`,
    /// `<u2` or `<i2` file (whose descr does not say bf16). Nil for anything else.
    public static func of(descr: String, readingBF16 bf16: Bool) -> ElementType? {
        switch descr {
        case "<f4": .f32
        case "<f2": .f16
        case _ where bf16 && bf16Descrs.contains(descr): .bf16
        default: nil
        }
    }

    /// `x` rounded to this type and back (exact for f32).
    @inline(__always)
    public func rounded(_ x: Float) -> Float {
        switch self {
        case .f32: x
        case .bf16: Self.float(bf16: Self.bf16(x))
        case .f16: Float(Float16(x))
        }
    }

    /// Rounds every value of `buffer` to this type, in place (nothing for f32).
    public func round(_ buffer: UnsafeMutableBufferPointer<Float>) {
        switch self {
        case .f32: return
        case .bf16: for i in buffer.indices { buffer[i] = Self.float(bf16: Self.bf16(buffer[i])) }
        case .f16: for i in buffer.indices { buffer[i] = Float(Float16(buffer[i])) }
        }
    }

    /// The bf16 bits of `x`, rounded to nearest even; a NaN stays a (quiet) NaN.
    @inline(__always)
    public static func bf16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    /// The float32 value of bf16 bits (exact).
    @inline(__always)
    public static func float(bf16 bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// Widens `count` elements of this type, stored at the start of `source`'s bytes, to float32 in
    /// `destination`. `source` may be the upper half of `destination`'s own bytes (the in-place
    /// read: each float is written only over bytes already converted).
    public func widen(_ source: UnsafeRawPointer, into destination: UnsafeMutablePointer<Float>, count: Int) {
        switch self {
        case .f32:
            if UnsafeRawPointer(destination) != source { UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4) }
        case .bf16:
            for i in 0 ..< count {
                destination[i] = Self.float(bf16: UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .f16:
            for i in 0 ..< count {
                destination[i] = Float(Float16(bitPattern: UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            }
        }
    }

    /// Narrows `count` float32 values to this type's little-endian bytes at `destination`.
    public func narrow(_ source: UnsafePointer<Float>, into destination: UnsafeMutableRawPointer, count: Int) {
        switch self {
        case .f32:
            destination.copyMemory(from: source, byteCount: count * 4)
        case .bf16:
            for i in 0 ..< count { destination.storeBytes(of: Self.bf16(source[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .f16:
            for i in 0 ..< count { destination.storeBytes(of: Float16(source[i]).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        }
    }
}
