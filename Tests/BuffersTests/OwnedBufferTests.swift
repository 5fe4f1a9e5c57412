// OwnedBuffer on its own: freed exactly once when the last reference goes (observed through the
// internal free hook), zeroed or filled when asked, count 0 a valid empty buffer, and the pointer
// stable for the buffer's life.

import Testing

@testable import Buffers

/// Addresses a hook saw freed, in order.
private final class FreeLog: @unchecked Sendable {
    var addresses: [UnsafeMutableRawPointer] = []
    func record(_ address: UnsafeMutableRawPointer) { addresses.append(address) }
}

@Suite("owned buffers")
struct OwnedBufferTests {
    @Test("deinit frees the buffer exactly once, when the last reference goes", arguments: [0, 1, 1000])
    func freesOnce(count: Int) {
        let log = FreeLog()
        var address: UnsafeMutableRawPointer?
        do {
            let buffer = OwnedBuffer<Float>(uninitializedCount: count, onFree: log.record)
            address = UnsafeMutableRawPointer(buffer.baseAddress)
            var second: OwnedBuffer<Float>? = buffer
            #expect(second?.count == count)
            second = nil
            #expect(log.addresses.isEmpty, "freed while a reference was left")
            withExtendedLifetime(buffer) {}
        }
        #expect(log.addresses == [address!])
    }

    @Test("buffers in an array are each freed once when the array goes")
    func arrayOfBuffers() {
        let log = FreeLog()
        var addresses: [UnsafeMutableRawPointer] = []
        do {
            let buffers = (0 ..< 4).map { _ in OwnedBuffer<Double>(uninitializedCount: 16, onFree: log.record) }
            addresses = buffers.map { UnsafeMutableRawPointer($0.baseAddress) }
            #expect(Set(addresses).count == 4)
        }
        #expect(log.addresses.count == 4)
        #expect(Set(log.addresses) == Set(addresses))
    }

    @Test("repeating: fills every element; repeating 0 is a zeroed buffer")
    func filled() {
        let zeros = OwnedBuffer<Float>(repeating: 0, count: 4097)
        #expect(zeros.count == 4097)
        #expect(zeros.buffer.allSatisfy { $0 == 0 })
        let ones = OwnedBuffer<UInt8>(repeating: 1, count: 100)
        #expect(ones.buffer.allSatisfy { $0 == 1 })
        let infinities = OwnedBuffer<Float>(repeating: -.infinity, count: 3)
        #expect(Array(infinities.buffer) == [-.infinity, -.infinity, -.infinity])
    }

    @Test("count 0: an empty buffer with a valid base address")
    func empty() {
        let empty = OwnedBuffer<Float>(repeating: 0, count: 0)
        #expect(empty.count == 0 && empty.buffer.isEmpty)
        #expect(empty.buffer.baseAddress == empty.baseAddress)
        #expect(empty.withUnsafeMutableBufferPointer { $0.count } == 0)
        let uninitialized = OwnedBuffer<Int>(uninitializedCount: 0)
        #expect(uninitialized.buffer.isEmpty && uninitialized.buffer.baseAddress != nil)
    }

    @Test("writes through the subscript, the buffer and the base address land in the same memory")
    func access() throws {
        let buffer = OwnedBuffer<Int32>(repeating: 0, count: 8)
        buffer[1] = 5
        buffer.buffer[2] = 6
        (buffer.baseAddress + 3).pointee = 7
        buffer.withUnsafeMutableBufferPointer { $0[4] = 8 }
        #expect(Array(buffer.buffer) == [0, 5, 6, 7, 8, 0, 0, 0])
        struct Pair: Equatable { var a: Int32, b: Double }
        let pairs = OwnedBuffer<Pair>(repeating: Pair(a: 1, b: 2), count: 2)
        #expect(pairs[1] == Pair(a: 1, b: 2))
    }

    @Test("withUnsafeMutableBufferPointer passes on typed errors and results")
    func typedErrors() {
        struct Failure: Error, Equatable {}
        let buffer = OwnedBuffer<Float>(repeating: 1, count: 2)
        #expect(throws: Failure.self) { try buffer.withUnsafeMutableBufferPointer { (_) throws(Failure) -> Int in throw Failure() } }
        #expect(buffer.withUnsafeMutableBufferPointer { $0.reduce(0, +) } == 2)
    }
}
