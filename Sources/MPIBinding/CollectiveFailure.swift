// Failing together. When one rank finds bad input (a truncated file, a missing path) the others
// must not wait forever in the next collective: every rank runs the step, then all agree on
// whether any failed, and if so every rank throws the same `CollectiveFailure`, which carries
// each failing rank's message. Nothing hangs and every rank exits non-zero.

public struct CollectiveFailure: Error, CustomStringConvertible, Sendable {
    /// The failing ranks and their messages, in rank order.
    public let failures: [(rank: Int, message: String)]
    public let worldSize: Int

    public var description: String {
        // Ranks that failed the same way are named together.
        var groups: [(message: String, ranks: [Int])] = []
        for (rank, message) in failures {
            if let i = groups.firstIndex(where: { $0.message == message }) { groups[i].ranks.append(rank) } else { groups.append((message, [rank])) }
        }
        return groups.map { group in
            let who =
                group.ranks.count == worldSize && worldSize > 1
                ? "every rank" : (group.ranks.count == 1 ? "rank \(group.ranks[0])" : "ranks " + group.ranks.map(String.init).joined(separator: ", "))
            return "\(who): \(group.message)"
        }.joined(separator: "\n")
    }
}

extension Communicator {
    /// Runs `body` on every rank; if it throws on any rank, every rank throws a `CollectiveFailure`
    /// naming the ranks that failed and why. Collective: every rank must call it.
    public func together<R>(_ body: () throws -> R) throws -> R {
        var result: R?
        var message = ""
        do { result = try body() } catch { message = String(describing: error) }
        let anyFailed = try allreduce(Int32(result == nil ? 1 : 0), .max)
        guard anyFailed != 0 else { return result! }
        let messages = try allgather(message)
        let failures = messages.enumerated().filter { !$0.element.isEmpty }.map { (rank: $0.offset, message: $0.element) }
        throw CollectiveFailure(failures: failures, worldSize: size)
    }
}
