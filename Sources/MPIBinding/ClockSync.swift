// Clock offsets of every rank to rank 0, from ping exchanges at the start of a profiled run:
// rank 0 sends a ping and notes when, the other rank answers with its clock's reading, and rank 0
// notes when the answer arrives. The exchange with the smallest round trip bounds the error by
// half of it (microseconds on one host); `clockOffset` does the arithmetic. Run with no event
// log attached, so the pings are not part of the profile.

import Profiling

extension Communicator {
    /// Rank r's clock minus rank 0's, for every rank (on rank 0; an empty array elsewhere).
    public func clockOffsets(rounds: Int = 20) throws(MPIError) -> [Double] {
        var offsets = [Double](repeating: 0, count: rank == 0 ? size : 0)
        var message = [Double](repeating: 0, count: 1)
        for peer in 1 ..< max(1, size) {
            if rank == 0 {
                var samples: [(sent: Double, remote: Double, received: Double)] = []
                for round in 0 ..< rounds {
                    let sent = ProfileClock.now()
                    message[0] = sent
                    try message.withUnsafeBufferPointer { (b) throws(MPIError) in
                        var r = try isend(b, to: peer, tag: round)
                        try wait(&r)
                    }
                    try message.withUnsafeMutableBufferPointer { (b) throws(MPIError) in
                        var r = try irecv(b, from: peer, tag: round)
                        try wait(&r)
                    }
                    samples.append((sent, message[0], ProfileClock.now()))
                }
                offsets[peer] = clockOffset(samples: samples)
            } else if rank == peer {
                for round in 0 ..< rounds {
                    try message.withUnsafeMutableBufferPointer { (b) throws(MPIError) in
                        var r = try irecv(b, from: 0, tag: round)
                        try wait(&r)
                    }
                    message[0] = ProfileClock.now()
                    try message.withUnsafeBufferPointer { (b) throws(MPIError) in
                        var r = try isend(b, to: 0, tag: round)
                        try wait(&r)
                    }
                }
            }
        }
        return offsets
    }
}
