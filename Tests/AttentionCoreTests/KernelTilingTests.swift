// The kernel's default tiles: taller query tiles without a mask (OpenBLAS's packing of each key
// and value block spread over more rows), 256 rows where a mask makes diagonal blocks, 512-key
// blocks everywhere; a kernel made without tiles takes its mask's, and given tiles win.

import AttentionCore
import Testing

@Suite("Kernel tiling")
struct KernelTilingTests {

    @Test("without a mask 384 x 512, with any mask 256 x 512")
    func defaultsPerMask() {
        #expect(KernelTiling.defaults(for: .none) == KernelTiling(queryTile: 384, keyBlock: 512))
        for mask in [AttentionMask.causal, .window(100)] {
            #expect(KernelTiling.defaults(for: mask) == KernelTiling(queryTile: 256, keyBlock: 512), "\(mask)")
        }
    }

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
