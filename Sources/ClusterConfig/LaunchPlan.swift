// From a cluster config to the command that starts seqpar: an mpirun argument list (hosts, rank
// count, mapping, binding, forwarded environment, MCA parameters), or a Slurm batch script. Pure:
// the facts about this machine come in as `LaunchMachine`, so tests can state them; nothing is run.

import Foundation

/// What the user asked for beyond the config.
public struct LaunchRequest: Sendable {
    /// Ranks in all (default: every slot, or ranks_per_node on every host).
    public var ranks: Int?
    /// Overrides the config's ranks_per_node.
    public var ranksPerNode: Int?
    /// The seqpar executable the ranks run.
    public var binary: String
    /// seqpar's own arguments (subcommand first).
    public var arguments: [String]
    /// Where the host list is written for --hostfile; nil passes it with --host.
    public var hostfile: String?
    /// The Launch/ folder (for netns-rsh); needed by [netns] configs.
    public var launchDirectory: String?

    public init(
        ranks: Int? = nil, ranksPerNode: Int? = nil, binary: String, arguments: [String] = [],
        hostfile: String? = nil, launchDirectory: String? = nil
    ) {
        (self.ranks, self.ranksPerNode, self.binary, self.arguments) = (ranks, ranksPerNode, binary, arguments)
        (self.hostfile, self.launchDirectory) = (hostfile, launchDirectory)
    }
}

/// The facts about the machine that launches.
public struct LaunchMachine: Sendable {
    public var isRoot: Bool
    public var cores: Int
    /// Names under which a host is this machine.
    public var names: Set<String>

    public init(isRoot: Bool, cores: Int, names: Set<String>) { (self.isRoot, self.cores, self.names) = (isRoot, cores, names) }

    public static var current: LaunchMachine {
        LaunchMachine(
            isRoot: geteuid() == 0, cores: ProcessInfo.processInfo.activeProcessorCount,
            names: ["localhost", "127.0.0.1", "::1", ProcessInfo.processInfo.hostName])
    }
}

public struct LaunchPlan: Equatable, Sendable {
    /// The command, program first.
    public var command: [String]
    public var ranks: Int
    /// Ranks per host when mapped ppr:N:node; nil when ranks fill slots in order.
    public var ranksPerNode: Int?
    /// The hostfile to write before running, when the request asked for one.
    public var hostfile: (path: String, contents: String)?

    public static func == (a: LaunchPlan, b: LaunchPlan) -> Bool {
        a.command == b.command && a.ranks == b.ranks && a.ranksPerNode == b.ranksPerNode
            && a.hostfile?.path == b.hostfile?.path && a.hostfile?.contents == b.hostfile?.contents
    }

    /// The command as one shell line.
    public var shellLine: String { command.map(shellQuoted).joined(separator: " ") }

    /// The mpirun command that runs `request` on the config's hosts.
    public static func mpirun(_ config: ClusterConfig, _ request: LaunchRequest, on machine: LaunchMachine = .current) throws -> LaunchPlan {
        guard config.slurm == nil else {
            throw ConfigError(file: config.file, line: nil, "a [slurm] config runs inside an allocation; expected Launch/slurm (or cluster-plan --slurm) to write its batch script")
        }
        let (ranks, perNode) = try rankCount(config, request, nodes: config.hosts.count, slots: config.hosts.map(\.slots))
        var command: [String] = []
        var rshAgent = config.mpi.rshAgent
        if let namespaces = config.namespaces {
            guard let launch = request.launchDirectory else {
                throw ConfigError(file: config.file, line: nil, "[netns] configs start mpirun with Launch/netns-rsh; expected the Launch folder (--launch-dir)")
            }
            let agent = (launch as NSString).appendingPathComponent("netns-rsh")
            command += [agent, "--exec", namespaces.mpirunHost]
            rshAgent = rshAgent ?? agent
        }
        command.append(config.mpi.mpirun)
        if machine.isRoot { command.append("--allow-run-as-root") }
        command += ["-np", String(ranks)]
        var hostfile: (path: String, contents: String)?
        if let path = request.hostfile {
            hostfile = (path, config.hosts.map { "\($0.target) slots=\($0.slots)\n" }.joined())
            command += ["--hostfile", path]
        } else {
            command += ["--host", config.hosts.map { "\($0.target):\($0.slots)" }.joined(separator: ",")]
        }
        command += ["--map-by", perNode.map { "ppr:\($0):node" } ?? "slot"]
        if let bind = config.bindTo { command += ["--bind-to", bind] }
        let single = config.hosts.count == 1 ? config.hosts[0] : nil
        if config.oversubscribe || (single.map { machine.names.contains($0.target) && $0.slots > machine.cores } ?? false) {
            command.append("--oversubscribe")
        }
        command += ["-x", "OPENBLAS_NUM_THREADS=\(config.blasThreads)"]
        for item in config.environment { command += ["-x", item] }
        command += mcaArguments(config.mpi, rshAgent: rshAgent).flatMap { ["--mca", $0.name, $0.value] }
        command += config.mpi.arguments
        command.append(request.binary)
        command += arguments(request.arguments, strategy: config.strategy)
        return LaunchPlan(command: command, ranks: ranks, ranksPerNode: perNode, hostfile: hostfile)
    }

    /// A Slurm batch script that runs `request` in an allocation the config's [slurm] table describes.
    public static func slurmScript(_ config: ClusterConfig, _ request: LaunchRequest) throws -> String {
        guard let slurm = config.slurm else {
            throw ConfigError(file: config.file, line: nil, "no [slurm] table; expected one (nodes, ntasks_per_node, …) to write a batch script")
        }
        try checkRequest(config, request)
        let tasksPerNode = request.ranksPerNode ?? config.ranksPerNode ?? slurm.tasksPerNode ?? 1
        let capacity = saturatingProduct(slurm.nodes, tasksPerNode)
        let ranks = try request.ranks ?? bounded(config, capacity, "\(slurm.nodes) node(s) x \(tasksPerNode) task(s)")
        guard ranks <= capacity || config.oversubscribe else {
            throw ConfigError(
                file: config.file, line: nil, "\(ranks) ranks do not fit \(slurm.nodes) node(s) x \(tasksPerNode) task(s); expected at most \(capacity)")
        }
        // Only the nodes the ranks need: --ranks 2 --ranks-per-node 2 is one node, whatever the config's count.
        let nodes = ranks > capacity ? slurm.nodes : min(slurm.nodes, ranks / tasksPerNode + (ranks % tasksPerNode == 0 ? 0 : 1))
        let cpus = slurm.cpusPerTask ?? config.blasThreads
        var lines = [
            "#!/bin/bash",
            "# seqpar batch job, written by `seqpar cluster-plan --slurm` from \(commentSafe(config.file)).",
            "# Submit with: sbatch THIS_FILE",
            "#SBATCH --job-name=\(slurm.jobName)",
            "#SBATCH --nodes=\(nodes)",
            "#SBATCH --ntasks=\(ranks)",
            "#SBATCH --ntasks-per-node=\(tasksPerNode)",
            "#SBATCH --cpus-per-task=\(cpus)",
        ]
        if let partition = slurm.partition { lines.append("#SBATCH --partition=\(partition)") }
        if let account = slurm.account { lines.append("#SBATCH --account=\(account)") }
        if let time = slurm.time { lines.append("#SBATCH --time=\(time)") }
        lines += slurm.sbatch.map { "#SBATCH \($0)" }
        if !slurm.prologue.isEmpty {
            // `module` (Lmod, Environment Modules) is a function that login shells define; a batch
            // script is not one, so `module load` would stop it under set -e. Define it first.
            lines.append("type module >/dev/null 2>&1 || { [ -r /etc/profile ] && . /etc/profile; } >/dev/null 2>&1 || true")
        }
        lines += ["set -eo pipefail"] + slurm.prologue
        lines.append("export OPENBLAS_NUM_THREADS=\(config.blasThreads)")
        for item in config.environment where item.contains("=") {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            lines.append("export \(parts[0])=\(shellQuoted(parts.count > 1 ? parts[1] : ""))")
        }
        let seqpar = [request.binary] + arguments(request.arguments, strategy: config.strategy)
        switch slurm.launcher {
        case .srun:
            guard config.mpi.arguments.isEmpty else {
                throw ConfigError(file: config.file, line: nil, "[mpi] args are mpirun arguments; expected none with launcher = \"srun\" (or launcher = \"mpirun\")")
            }
            // srun starts the ranks itself; Open MPI reads its settings from OMPI_MCA_* variables.
            for parameter in mcaArguments(config.mpi, rshAgent: config.mpi.rshAgent) {
                // Checked when the config is read; a name from elsewhere is checked again here.
                guard ClusterConfig.isMCAName(parameter.name) else {
                    throw ConfigError(file: config.file, line: nil, "MCA parameter name '\(parameter.name)' is not a name; expected letters, digits and '_' only")
                }
                lines.append("export OMPI_MCA_\(parameter.name)=\(shellQuoted(parameter.value))")
            }
            var srun = [
                "srun", "--mpi=\(slurm.srunMPI)", "--nodes=\(nodes)", "--ntasks=\(ranks)",
                "--ntasks-per-node=\(tasksPerNode)", "--cpus-per-task=\(cpus)",
            ]
            if let bind = config.bindTo { srun.append("--cpu-bind=\(srunBinding(bind))") }
            if config.oversubscribe { srun.append("--overcommit") }
            lines.append((srun + seqpar).map(shellQuoted).joined(separator: " "))
        case .mpirun:
            // Open MPI reads the allocation's hosts from Slurm's environment: no host list here.
            var mpirun = [config.mpi.mpirun, "-np", String(ranks), "--map-by", "ppr:\(tasksPerNode):node"]
            if let bind = config.bindTo { mpirun += ["--bind-to", bind] }
            if config.oversubscribe { mpirun.append("--oversubscribe") }
            mpirun += ["-x", "OPENBLAS_NUM_THREADS"]
            for item in config.environment { mpirun += ["-x", String(item.split(separator: "=", maxSplits: 1)[0])] }
            mpirun += mcaArguments(config.mpi, rshAgent: config.mpi.rshAgent).flatMap { ["--mca", $0.name, $0.value] }
            mpirun += config.mpi.arguments
            lines.append((mpirun + seqpar).map(shellQuoted).joined(separator: " "))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Rank count and ranks per node; refuses more ranks than slots unless the config oversubscribes.
    static func rankCount(_ config: ClusterConfig, _ request: LaunchRequest, nodes: Int, slots: [Int]) throws -> (Int, Int?) {
        try checkRequest(config, request)
        if let asked = request.ranksPerNode {
            if !config.oversubscribe, let fewest = slots.min(), asked > fewest {
                throw ConfigError(
                    file: config.file, line: nil, "--ranks-per-node \(asked) exceeds the \(fewest) slot(s) of a host; expected at most \(fewest), or oversubscribe = true")
            }
        }
        let perNode = request.ranksPerNode ?? config.ranksPerNode
        let capacity = perNode.map { saturatingProduct($0, nodes) } ?? saturatingSum(slots)
        let origin = perNode.map { "\(nodes) host(s) x \($0) rank(s) per node" } ?? "the slots of \(nodes) host(s)"
        let ranks = try request.ranks ?? bounded(config, capacity, origin)
        if ranks > capacity, !config.oversubscribe {
            let what = perNode.map { "\(nodes) host(s) x \($0) rank(s) per node" } ?? "the \(capacity) slot(s) of \(nodes) host(s)"
            throw ConfigError(file: config.file, line: nil, "\(ranks) ranks exceed \(what); expected at most \(capacity), more slots, or oversubscribe = true")
        }
        return (ranks, perNode)
    }

    /// --ranks and --ranks-per-node: at least 1, at most `ClusterConfig.maxCount`.
    static func checkRequest(_ config: ClusterConfig, _ request: LaunchRequest) throws {
        for (option, value) in [("--ranks", request.ranks), ("--ranks-per-node", request.ranksPerNode)] {
            guard let value else { continue }
            guard value >= 1 else { throw ConfigError(file: config.file, line: nil, "\(option) \(value): expected at least 1") }
            guard value <= ClusterConfig.maxCount else {
                throw ConfigError(file: config.file, line: nil, "\(option) \(value): expected at most \(ClusterConfig.maxCount)")
            }
        }
    }

    /// `a` x `b`, or Int.max where that overflows (the config's counts are bounded when read,
    /// but a config built in code need not be).
    static func saturatingProduct(_ a: Int, _ b: Int) -> Int {
        let (product, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : product
    }

    /// The sum of `counts`, or Int.max where that overflows.
    static func saturatingSum(_ counts: [Int]) -> Int {
        var sum = 0
        for count in counts {
            let (next, overflow) = sum.addingReportingOverflow(count)
            if overflow { return .max }
            sum = next
        }
        return sum
    }

    /// `ranks` when at most `ClusterConfig.maxCount`; `what` says where a default count came from.
    static func bounded(_ config: ClusterConfig, _ ranks: Int, _ what: String) throws -> Int {
        guard ranks <= ClusterConfig.maxCount else {
            let count = ranks == .max ? "more than \(Int.max)" : String(ranks)
            throw ConfigError(
                file: config.file, line: nil, "\(what) make \(count) ranks; expected at most \(ClusterConfig.maxCount) in all (or fewer with --ranks)")
        }
        return ranks
    }

    static func mcaArguments(_ mpi: ClusterConfig.MPI, rshAgent: String?) -> [ClusterConfig.MCAParameter] {
        var parameters: [ClusterConfig.MCAParameter] = []
        if let btl = mpi.btl { parameters.append(.init(name: "btl", value: btl)) }
        if let pml = mpi.pml { parameters.append(.init(name: "pml", value: pml)) }
        if let interfaces = mpi.interfaces {
            parameters.append(.init(name: "btl_tcp_if_include", value: interfaces))
            parameters.append(.init(name: "oob_tcp_if_include", value: interfaces))
        }
        if let rshAgent { parameters.append(.init(name: "plm_rsh_agent", value: rshAgent)) }
        return parameters + mpi.mca
    }

    /// seqpar's arguments, with the config's strategy when run or verify names none.
    static func arguments(_ arguments: [String], strategy: String?) -> [String] {
        guard let strategy, let subcommand = arguments.first, ["run", "verify"].contains(subcommand),
            !arguments.contains(where: { $0 == "--strategy" || $0.hasPrefix("--strategy=") })
        else { return arguments }
        return arguments + ["--strategy", strategy]
    }

    static func srunBinding(_ bind: String) -> String {
        switch bind {
        case "core": "cores"
        case "socket": "sockets"
        case "hwthread": "threads"
        case "l2cache", "l3cache": "ldoms"
        case "numa": "ldoms"
        case "board": "boards"
        default: "none"
        }
    }
}

/// `text` for a comment line of a script: control characters (a newline would end the comment
/// and start a command) written as \u{…} escapes.
public func commentSafe(_ text: String) -> String {
    text.unicodeScalars.map { $0.properties.generalCategory == .control ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined()
}

/// `text` as one shell word.
public func shellQuoted(_ text: String) -> String {
    let safe = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")
    if !text.isEmpty, text.unicodeScalars.allSatisfy(safe.contains) { return text }
    return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
