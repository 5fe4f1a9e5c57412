// A rank's shard holds Q, K and V in the job's element type: bf16 and f16 jobs in 16 bits (half of
// float32's memory), made or read rounded to nearest even, files of the job's own type copied bit
// for bit, and NaN or infinity refused from the bits, naming the tensor and the element.

import AttentionCore
import FileFormats
import Foundation
import SequenceParallel
import Testing

@Suite("shard storage in the element type")
struct ShardStorageTests {
    static let shape = try! AttentionShape(heads: 4, kvHeads: 2, headDim: 40)

    static func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-shard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test("synthetic bf16/f16 shards hold 16-bit bits: the float32 values rounded, zigzag rows of rank 1 of 3", arguments: [ElementType.bf16, .f16])
    func synthetic(_ type: ElementType) throws {
        let tokens = 301
        let shard = try LocalShard.load(
            .synthetic(seed: 7, tokens: tokens, shape: Self.shape, elementType: type), layout: .zigzag, rank: 1, ranks: 3)
        #expect(shard.elementType == type && shard.queryStorage.elementType == type && shard.keyValueStorage.elementType == type)
        #expect(shard.queryStorage.bits.count == shard.queryRows * Self.shape.queryRowWidth)
        #expect(shard.keyValueStorage.bits.count == 2 * shard.keyRows * Self.shape.kvRowWidth)
        let rows = shard.querySegments.map(\.positions)
        let q = SyntheticInput.tensor(.query, seed: 7, heads: 4, headDim: 40, rows: rows).values.map(type.rounded)
        let k = SyntheticInput.tensor(.key, seed: 7, heads: 2, headDim: 40, rows: rows).values.map(type.rounded)
        let v = SyntheticInput.tensor(.value, seed: 7, heads: 2, headDim: 40, rows: rows).values.map(type.rounded)
        let (keys, values) = shard.widenedKeyValues()
        #expect(shard.widenedQueries().map(\.bitPattern) == q.map(\.bitPattern))
        #expect(keys.map(\.bitPattern) == k.map(\.bitPattern))
        #expect(values.map(\.bitPattern) == v.map(\.bitPattern))
        #expect(q.contains { $0 != 0 })
    }

    @Test("files: a file of the job's type is read bit for bit; a wider (f32) or other 16-bit type is rounded through float32")
    func files() throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let tokens = 57
        let q = SyntheticInput.tensor(.query, seed: 3, heads: 4, headDim: 40, rows: [0 ..< tokens]).values.map { $0 * 3.3 }
        let kv = SyntheticInput.tensor(.key, seed: 3, heads: 2, headDim: 40, rows: [0 ..< tokens]).values.map { $0 * 0.7 }
        for fileType in ElementType.allCases {
            let (qp, kp) = (dir.appendingPathComponent("q-\(fileType).npy").path, dir.appendingPathComponent("k-\(fileType).npy").path)
            try NpyFile.save(qp, shape: [tokens, 4, 40], values: q, elementType: fileType)
            try NpyFile.save(kp, shape: [tokens, 2, 40], values: kv, elementType: fileType)
            // (A bf16 file, '<V2', is read only by a bf16 job: its descr does not say bf16.)
            for jobType in [ElementType.bf16, .f16] where fileType != .bf16 || jobType == .bf16 {
                let shard = try LocalShard.load(
                    .files(q: qp, k: kp, v: kp, scale: nil, elementType: jobType), layout: .contiguous, rank: 1, ranks: 2)
                #expect(shard.elementType == jobType)
                let rows = shard.querySegments[0].positions
                // The file's values (rounded to its type), then rounded to the job's.
                let expected = rows.flatMap { row in q[row * 160 ..< (row + 1) * 160] }.map { jobType.rounded(fileType.rounded($0)) }
                #expect(shard.widenedQueries().map(\.bitPattern) == expected.map(\.bitPattern), "\(fileType) file, \(jobType) job")
                let keys = rows.flatMap { row in kv[row * 80 ..< (row + 1) * 80] }.map { jobType.rounded(fileType.rounded($0)) }
                #expect(shard.widenedKeyValues().keys.map(\.bitPattern) == keys.map(\.bitPattern), "\(fileType) file, \(jobType) job")
            }
        }
    }

    @Test("NaN and infinity in 16-bit inputs are refused from the bits, naming the tensor, file and element", arguments: [ElementType.bf16, .f16])
    func nonFinite(_ type: ElementType) throws {
        let dir = try Self.directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let tokens = 20
        var kv = [Float](repeating: 0.5, count: tokens * 80)
        let q = [Float](repeating: 0.25, count: tokens * 160)
        kv[13 * 80 + 40 + 7] = .nan  // token 13, kv head 1, dim 7
        let (qp, kp, vp) = (dir.appendingPathComponent("q.npy").path, dir.appendingPathComponent("k.npy").path, dir.appendingPathComponent("v.npy").path)
        try NpyFile.save(qp, shape: [tokens, 4, 40], values: q, elementType: type)
        try NpyFile.save(kp, shape: [tokens, 2, 40], values: [Float](repeating: 0.5, count: tokens * 80), elementType: type)
        try NpyFile.save(vp, shape: [tokens, 2, 40], values: kv, elementType: type)
        let source = InputSource.files(q: qp, k: kp, v: vp, scale: nil, elementType: type)
        let error = #expect(throws: LocalShard.NonFiniteInput.self) { try LocalShard.load(source, layout: .contiguous, rank: 1, ranks: 2) }
        #expect(error?.description.contains("V \(vp) holds NaN at [token 13, head 1, dim 7]") == true, "\(String(describing: error))")
        // Rank 0's rows (tokens 0..<10) hold no NaN.
        #expect(throws: Never.self) { try LocalShard.load(source, layout: .contiguous, rank: 0, ranks: 2) }
    }

    @Test("ElementStorage finds NaN and infinity in bits, not the largest finite values")
    func bits() {
        for type in [ElementType.bf16, .f16] {
            let largest: Float = type == .bf16 ? Float(bitPattern: 0x7F7F_0000) : 65504
            let storage = ElementStorage(zeroed: 8, elementType: type)
            storage.store([largest, -largest, 1, 0, -0.0, 1e-30, 2, 3], at: 0, count: 8)
            #expect(storage.firstNonFinite(0 ..< 8) == nil, "\(type)")
            storage.store([-.infinity], at: 5, count: 1)
            #expect(storage.firstNonFinite(0 ..< 8) == 5 && storage.value(at: 5) == -.infinity, "\(type)")
            #expect(storage.firstNonFinite(6 ..< 8) == nil, "\(type)")
            storage.store([.nan], at: 6, count: 1)
            #expect(storage.firstNonFinite(6 ..< 8) == 6 && storage.value(at: 6).isNaN, "\(type)")
        }
    }
}
