// `seqpar cluster-plan`: reads a cluster config and prints the command that starts seqpar on those
// hosts (what Launch/cluster runs, and Launch/slurm writes). It never starts MPI, so it runs
// anywhere, on one process, before anything is launched.

import ArgumentParser
import AttentionJobs
import ClusterConfig
import Foundation
import SequenceParallel

struct ClusterPlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster-plan",
        abstract: "Print the mpirun command (or Slurm batch script) that runs seqpar on a cluster config's hosts; starts nothing.",
        discussion: """
            Configs and their format: cluster-configs/README.md. seqpar's own arguments follow '--':
              seqpar cluster-plan cluster-configs/netns-2host.toml --ranks-per-node 1 -- verify --causal
            Prints one argument per line, --null for each argument ended by a NUL byte (what Launch/cluster
            reads: arguments may hold newlines), --shell for one quoted line, --json for a JSON object,
            --slurm for a batch script.
            """
    )

    @Argument(help: "The cluster config (a .toml file in cluster-configs/).")
    var config: String
    @Option(help: "Ranks in all (default: every slot, or ranks_per_node on every host).")
    var ranks: Int?
    @Option(name: .customLong("ranks-per-node"), help: "Ranks on each host (mpirun --map-by ppr:N:node); overrides the config's ranks_per_node.")
    var ranksPerNode: Int?
    @Option(help: "The seqpar binary the ranks run (default: this one).")
    var binary: String?
    @Option(help: "Write the host list to this file and pass it with --hostfile (default: --host on the command line).")
    var hostfile: String?
    @Option(name: .customLong("launch-dir"), help: "The Launch folder, for [netns] configs (default: found above this binary).")
    var launchDir: String?
    @Flag(help: "Print a JSON object: command, ranks, hosts.")
    var json = false
    @Flag(help: "Print the command as one shell-quoted line.")
    var shell = false
    @Flag(help: "Print a Slurm batch script instead (configs with a [slurm] table).")
    var slurm = false
    @Flag(help: "Print each argument followed by a NUL byte (for scripts: any argument passes unchanged).")
    var null = false
    @Argument(parsing: .postTerminator, help: "seqpar's arguments, after '--'.")
    var arguments: [String] = []

    func validate() throws {
        guard [json, shell, slurm, null].filter({ $0 }).count <= 1 else { throw ValidationError("--json, --shell, --slurm and --null are different outputs: give one of them.") }
        if let ranks, ranks < 1 { throw ValidationError("--ranks must be at least 1 (got \(ranks)).") }
        if let ranksPerNode, ranksPerNode < 1 { throw ValidationError("--ranks-per-node must be at least 1 (got \(ranksPerNode)).") }
    }

    func run() throws {
        do {
            let cluster = try ClusterConfig.load(config, strategies: StrategyName.allCases.map(\.rawValue))
            let executable = binary ?? Self.thisExecutable
            let request = LaunchRequest(
                ranks: ranks, ranksPerNode: ranksPerNode, binary: executable, arguments: arguments,
                hostfile: hostfile, launchDirectory: launchDir ?? Self.launchDirectory(above: executable))
            if slurm {
                print(try LaunchPlan.slurmScript(cluster, request), terminator: "")
                return
            }
            let plan = try LaunchPlan.mpirun(cluster, request)
            if let hostfile = plan.hostfile {
                try Data(hostfile.contents.utf8).write(to: URL(fileURLWithPath: hostfile.path))
            }
            if json {
                let hosts = cluster.hosts.map { ClusterPlanJSON.Host(name: $0.name, slots: $0.slots, address: $0.address) }
                var object = ClusterPlanJSON(config: config, command: plan.command, shell: plan.shellLine, ranks: plan.ranks, hosts: hosts)
                object.ranksPerNode = plan.ranksPerNode
                object.hostfile = plan.hostfile?.path
                print(JSONReport.text(object))
            } else if shell {
                print(plan.shellLine)
            } else if null {
                FileHandle.standardOutput.write(Data(plan.command.map { $0 + "\u{0}" }.joined().utf8))
            } else {
                plan.command.forEach { print($0) }
            }
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("seqpar cluster-plan: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    static var thisExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// The nearest Launch/ folder holding netns-rsh above the binary (a build sits in <package>/.build/...).
    static func launchDirectory(above executable: String) -> String? {
        var folder = URL(fileURLWithPath: executable).deletingLastPathComponent()
        while folder.path != "/" {
            let launch = folder.appendingPathComponent("Launch")
            if FileManager.default.fileExists(atPath: launch.appendingPathComponent("netns-rsh").path) { return launch.path }
            folder.deleteLastPathComponent()
        }
        return nil
    }
}
