// `run --save-inputs DIR`: the synthetic Q, K and V as .npy files (DIR/Q.npy, K.npy, V.npy), so
// that `verify --q DIR/Q.npy --k DIR/K.npy --v DIR/V.npy` (or NumPy, PyTorch) reads the same
// values. All three or none, as every output: rank 0 makes a full-size temporary beside each
// file (a full disk fails there, before any file is touched), each rank writes an even share of
// the rows into them, a bounded number of rows at a time, and only when every rank has written
// are they renamed over Q.npy, K.npy and V.npy (OutputTransaction).

import AttentionCore
import FileFormats
import Foundation
import SequenceParallel

/// The synthetic inputs written as `.npy` files, for a later run from files (or NumPy).
public enum SavedInputs {
    /// Each tensor and its file name.
    public static let names: [(SyntheticInput.Tensor, String)] = [(.query, "Q.npy"), (.key, "K.npy"), (.value, "V.npy")]

    /// The three files in `folder`: Q.npy, K.npy, V.npy.
    public static func paths(_ folder: String) -> [String] { names.map { (folder as NSString).appendingPathComponent($0.1) } }

    /// Writes the synthetic Q, K and V of `seed` to `folder`, in `elementType` (rounded to nearest
    /// even, as the job holds them); called by every rank alike, each writing an even share of the rows.
    /// - Throws: `CollectiveFailure` on every rank when any rank cannot create or write a file.
    public static func write(
        _ folder: String, seed: UInt64, tokens: Int, shape: AttentionShape, elementType: ElementType = .f32, communicator: Communicator
    ) throws {
        let files = paths(folder)
        let widths = [shape.heads, shape.kvHeads, shape.kvHeads]
        let transaction = try OutputTransaction.begin(
            zip(files, widths).map { (option: "--save-inputs", path: $0, shape: [tokens, $1, shape.headDim], elementType: elementType) }, communicator: communicator)
        let (rank, ranks) = (communicator.rank, communicator.size)
        let mine = tokens * rank / ranks ..< tokens * (rank + 1) / ranks
        let chunk = 1024
        do {
            try communicator.together {
                for ((tensor, _), (target, heads)) in zip(names, zip(transaction.targets, widths)) {
                    let npy = try NpyFile.open(writing: target.temporary)
                    let rowWidth = heads * shape.headDim
                    var buffer = [Float](repeating: 0, count: max(1, min(chunk, mine.count) * rowWidth))
                    for first in stride(from: mine.lowerBound, to: mine.upperBound, by: chunk) {
                        let rows = first ..< min(mine.upperBound, first + chunk)
                        try buffer.withUnsafeMutableBufferPointer { buffer in
                            let part = UnsafeMutableBufferPointer(rebasing: buffer[0 ..< rows.count * rowWidth])
                            SyntheticInput.fill(part, seed: seed, tensor: tensor, rowWidth: rowWidth, rows: [rows])
                            try npy.write(from: part.baseAddress!, elementOffset: first * rowWidth, count: part.count)
                        }
                    }
                }
            }
            try transaction.commit()
            OutputCleanup.resumeSignals()
        } catch {
            transaction.abandon()
            throw error
        }
    }
}
