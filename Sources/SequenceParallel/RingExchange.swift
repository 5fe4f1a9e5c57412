// The ring exchange shared by the ring-shaped strategies: each rank's packed K/V shard travels
// once around the ring. At every step the send of the block in hand to rank r+1 and the receive
// of the next block from rank r-1 are posted before the caller computes on the block in hand;
// the caller pokes `progress` while it computes, so MPI moves the data meanwhile. Two receive
// buffers, allocated once, alternate; the local shard itself is sent first and never overwritten.

import AttentionCore

final class RingExchange {
    let communicator: Communicator
    private let buffers: [UnsafeMutableBufferPointer<Float>]

    /// - Parameter capacity: floats in the largest block any rank sends.
    init(communicator: Communicator, capacity: Int) {
        self.communicator = communicator
        buffers = communicator.size > 1 ? (0 ..< 2).map { _ in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(1, capacity))
            buffer.initialize(repeating: 0)
            return buffer
        } : []
    }

    deinit { buffers.forEach { $0.deallocate() } }

    /// Runs `body` once per ring step with the block that rank `source` started with.
    /// - Parameters:
    ///   - local: this rank's packed block.
    ///   - blockSize: floats in the block that `rank` starts with.
    func circulate(_ local: UnsafeBufferPointer<Float>, blockSize: (Int) -> Int,
                   _ body: (_ source: Int, _ block: UnsafePointer<Float>, _ progress: () -> Void) throws -> Void) throws {
        let ranks = communicator.size
        var current = UnsafeBufferPointer(rebasing: local[0 ..< blockSize(communicator.rank)])
        for step in 0 ..< ranks {
            let source = communicator.neighbour(-step)
            var send = Request(), receive = Request()
            var incoming = current
            if step < ranks - 1 {
                let buffer = buffers[step % 2]
                let next = UnsafeMutableBufferPointer(rebasing: buffer[0 ..< blockSize(communicator.neighbour(-step - 1))])
                receive = try communicator.irecv(next, from: communicator.neighbour(-1), tag: step)
                send = try communicator.isend(current, to: communicator.neighbour(1), tag: step)
                incoming = UnsafeBufferPointer(next)
            }
            try body(source, current.baseAddress!) {
                // Progress only: a failure here resurfaces from the wait below.
                _ = try? communicator.test(&send)
                _ = try? communicator.test(&receive)
            }
            try communicator.wait(&send)
            try communicator.wait(&receive)
            current = incoming
        }
    }
}
