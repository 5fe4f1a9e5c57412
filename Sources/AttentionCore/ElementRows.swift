// Tensors held in their element type: float32, or the bits of bf16/f16. A bf16 or f16 job keeps
// Q, K and V in 16 bits from the moment they are read or made (half of float32's memory and
// bytes on the wire); the kernels widen or narrow each tile as they copy it anyway.

import BlasRuntime
import Buffers
import FileFormats

/// A pointer to elements of `elementType`: float32 values, or bf16/f16 bits.
public struct ElementRows {
    public let base: UnsafeRawPointer
    public let elementType: ElementType

    public init(_ floats: UnsafePointer<Float>) {
        base = UnsafeRawPointer(floats)
        elementType = .f32
    }

    public init(raw: UnsafeRawPointer, elementType: ElementType) {
        base = raw
        self.elementType = elementType
    }

    /// The rows from element `offset` on.
    public func advanced(by offset: Int) -> ElementRows { ElementRows(raw: base + offset * elementType.byteSize, elementType: elementType) }

    /// `count` elements from element `offset`, widened to float32.
    @inline(__always)
    public func load(_ offset: Int, count: Int, into destination: UnsafeMutablePointer<Float>) {
        elementType.widen(base + offset * elementType.byteSize, into: destination, count: count)
    }

    /// `count` elements from element `offset` as bf16 bits: float32 values are narrowed (exactly,
    /// when they hold bf16 values); bf16 bits are copied. (Only bf16 jobs have bf16 products, so
    /// f16 rows never come here.)
    @inline(__always)
    public func loadBF16(_ offset: Int, count: Int, into destination: UnsafeMutablePointer<UInt16>) {
        switch elementType {
        case .f32: narrowToBF16(base.assumingMemoryBound(to: Float.self) + offset, into: destination, count: count)
        case .bf16: destination.update(from: base.assumingMemoryBound(to: UInt16.self) + offset, count: count)
        case .f16: preconditionFailure("bf16 products take bf16 or float32 rows")
        }
    }
}

/// Elements of one type in memory this object owns (zeroed when made): float32 values for f32,
/// bits for bf16 and f16.
public final class ElementStorage {
    public let elementType: ElementType
    /// Elements held (at least 1, so every pointer is valid).
    public let count: Int
    private let floatStorage: OwnedBuffer<Float>?
    private let bitStorage: OwnedBuffer<UInt16>?

    public init(zeroed count: Int, elementType: ElementType) {
        self.elementType = elementType
        self.count = max(1, count)
        floatStorage = elementType == .f32 ? OwnedBuffer(repeating: 0, count: self.count) : nil
        bitStorage = elementType == .f32 ? nil : OwnedBuffer(repeating: 0, count: self.count)
    }

    public var raw: UnsafeMutableRawPointer {
        floatStorage.map { UnsafeMutableRawPointer($0.baseAddress) } ?? UnsafeMutableRawPointer(bitStorage!.baseAddress)
    }

    public var rows: ElementRows { ElementRows(raw: raw, elementType: elementType) }

    /// The values of an f32 storage.
    public var floats: UnsafeMutableBufferPointer<Float> {
        guard let floatStorage else { preconditionFailure("a \(elementType) storage holds bits, not floats") }
        return floatStorage.buffer
    }

    /// The bits of a bf16 or f16 storage.
    public var bits: UnsafeMutableBufferPointer<UInt16> {
        guard let bitStorage else { preconditionFailure("an f32 storage holds floats, not bits") }
        return bitStorage.buffer
    }

    /// Stores `count` float32 values at element `offset`, narrowed to the element type (exactly
    /// when they hold values of it; rounded to nearest even otherwise).
    public func store(_ values: UnsafePointer<Float>, at offset: Int, count: Int) {
        elementType.narrow(values, into: raw + offset * elementType.byteSize, count: count)
    }

    /// Every element widened to float32 (for checks and the single-rank reference).
    public func widened(_ range: Range<Int>) -> [Float] {
        [Float](unsafeUninitializedCapacity: range.count) { buffer, initialized in
            rows.load(range.lowerBound, count: range.count, into: buffer.baseAddress!)
            initialized = range.count
        }
    }

    /// The index of the first NaN or infinity in `range`, if any.
    public func firstNonFinite(_ range: Range<Int>) -> Int? {
        switch elementType {
        case .f32:
            return Self.firstNonFinite(UnsafePointer(floats.baseAddress! + range.lowerBound), count: range.count).map { $0 + range.lowerBound }
        case .bf16, .f16:
            // All exponent bits set: infinity or NaN.
            let exponent: UInt16 = elementType == .bf16 ? 0x7F80 : 0x7C00
            let bits = self.bits
            return range.first { bits[$0] & exponent == exponent }
        }
    }

    /// The value at `index`, widened (for messages).
    public func value(at index: Int) -> Float {
        var x: Float = 0
        rows.load(index, count: 1, into: &x)
        return x
    }

    /// The index of the first NaN or infinity. x - x is 0 for a finite x and NaN otherwise, so
    /// one vector sum tells whether a block holds any.
    public static func firstNonFinite(_ base: UnsafePointer<Float>, count: Int) -> Int? {
        let block = 4096
        var start = 0
        while start < count {
            let end = min(count, start + block)
            var sum = SIMD16<Float>()
            var i = start
            while i + 16 <= end {
                let x = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD16<Float>.self)
                sum += x - x
                i += 16
            }
            var tail: Float = 0
            while i < end { tail += base[i] - base[i]; i += 1 }
            if !(sum.sum() + tail).isFinite || (sum.sum() + tail).isNaN {
                if let bad = (start ..< end).first(where: { !base[$0].isFinite }) { return bad }
            }
            start = end
        }
        return nil
    }
}
