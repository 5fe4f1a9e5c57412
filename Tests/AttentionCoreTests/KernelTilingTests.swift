// The kernel's tiles: a kernel made without tiles takes its mask's defaults (their values are
// tuned by benchmark, docs/PERFORMANCE.md, not pinned here), and given tiles win.

import AttentionCore
import BlasRuntime
import Testing

@Suite("Kernel tiling")
struct KernelTilingTests {

    @Test("kernels made without tiles take their mask's; given tiles win")
    func kernelsTakeTheirMasks() throws {
        let shape = try AttentionShape(heads: 4, kvHeads: 2, headDim: 32)
        #expect(LocalAttention(shape: shape, mask: .none).tiling == KernelTiling.defaults(for: .none))
        #expect(LocalAttention(shape: shape, mask: .causal).tiling == KernelTiling.defaults(for: .causal))
        #expect(LocalAttentionBackward(shape: shape, mask: .none).tiling == KernelTiling.defaults(for: .none))
        let given = KernelTiling(queryTile: 7, keyBlock: 13)
        #expect(LocalAttention(shape: shape, mask: .none, tiling: given).tiling == given)
    }
}

@Suite("P·V product")
struct ValueProductTests {

    @Test("pieces only with an AVX-512 small-matrix kernel and head dims up to 64, within OpenBLAS's bound")
    func choice() {
        for headDim in [16, 32, 48, 64] {
            guard case .pieces(let rows, let keys) = ValueProduct.choice(headDim: headDim, smallMatrixKernel: true) else {
                Issue.record("head dim \(headDim): no pieces")
                continue
            }
            #expect(keys == 128)
            #expect(rows % 16 == 0 && rows >= 16, "head dim \(headDim): \(rows) rows")
            #expect(rows * headDim * keys <= 1_000_000, "head dim \(headDim): \(rows)x\(headDim)x\(keys) beyond the small kernel's bound")
            #expect((rows + 16) * headDim * keys > 1_000_000, "head dim \(headDim): \(rows) rows leave room for 16 more")
        }
        for headDim in [65, 80, 96, 128] {
            #expect(ValueProduct.choice(headDim: headDim, smallMatrixKernel: true) == .packed, "head dim \(headDim)")
        }
        for headDim in [32, 64, 128] {
            #expect(ValueProduct.choice(headDim: headDim, smallMatrixKernel: false) == .packed, "head dim \(headDim)")
        }
    }

    @Test("the small-matrix kernel is recognised by core and by the symbol OpenBLAS exports")
    func smallMatrixKernel() {
        let dynamicArch: Set = ["sgemm_small_kernel_nn_COOPERLAKE", "sgemm_small_kernel_nn_SKYLAKEX", "sgemm_small_kernel_nn_HASWELL"]
        #expect(BlasCore.smallMatrixKernel(core: "Cooperlake", exports: dynamicArch.contains))
        #expect(BlasCore.smallMatrixKernel(core: "SkylakeX", exports: dynamicArch.contains))
        // Haswell's and Zen's small kernels are plain C loops, slower than packing.
        #expect(!BlasCore.smallMatrixKernel(core: "Haswell", exports: dynamicArch.contains))
        #expect(!BlasCore.smallMatrixKernel(core: "Zen", exports: { _ in true }))
        // A library built for one core names the kernel without a suffix.
        #expect(BlasCore.smallMatrixKernel(core: "SapphireRapids", exports: { $0 == "sgemm_small_kernel_nn" }))
        // Built without SMALL_MATRIX_OPT (or older than 0.3.17): no such symbol, no pieces.
        #expect(!BlasCore.smallMatrixKernel(core: "Cooperlake", exports: { _ in false }))
        #expect(!BlasCore.smallMatrixKernel(core: "SkylakeX", exports: ["sgemm_small_kernel_nn_COOPERLAKE"].contains))
    }

    @Test("this process's OpenBLAS: the symbol lookup agrees with the core it runs")
    func thisLibrary() throws {
        // Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) exports every core's small kernel, so the answer
        // follows the core alone; a core seqpar lifted to SkylakeX or Cooperlake must find it.
        let core = BlasCore.current.lowercased()
        if ["skylakex", "cooperlake", "sapphirerapids"].contains(core), BlasCore.version >= (0, 3, 17) {
            #expect(BlasCore.hasSmallMatrixKernel, "OpenBLAS \(BlasCore.version) on \(BlasCore.current) exports no small-matrix kernel")
        } else {
            #expect(!BlasCore.hasSmallMatrixKernel, "\(BlasCore.current) has no AVX-512 small-matrix kernel")
        }
        // A kernel made without a product takes this library's: pieces at 64 where it has the kernel, packed at 128.
        let pieces = ValueProduct.choice(headDim: 64, smallMatrixKernel: true)
        #expect(LocalAttention(shape: try AttentionShape(heads: 2, kvHeads: 1, headDim: 64), mask: .none).valueProduct == (BlasCore.hasSmallMatrixKernel ? pieces : .packed))
        #expect(LocalAttention(shape: try AttentionShape(heads: 2, kvHeads: 1, headDim: 128), mask: .none).valueProduct == .packed)
    }

    @Test("packed and pieces give the same result to float rounding")
    func productsAgree() throws {
        let problem = try Problem(tokens: 613, heads: 4, kvHeads: 2, headDim: 64, mask: .causal)
        let packed = problem.kernel(tiling: KernelTiling(queryTile: 96, keyBlock: 256), valueProduct: .packed)
        for pieces in [ValueProduct.pieces(rows: 112, keys: 128), .pieces(rows: 9, keys: 50)] {
            let result = problem.kernel(tiling: KernelTiling(queryTile: 96, keyBlock: 256), valueProduct: pieces)
            let difference = zip(result.output, packed.output).map { abs($0 - $1) }.max() ?? .infinity
            #expect(difference < 1e-6, "\(pieces): largest difference \(difference)")
            #expect(result.lse == packed.lse, "\(pieces): the LSE does not depend on P·V")
        }
    }
}
