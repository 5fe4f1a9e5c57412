// The cluster config reader and the launch commands built from it, in one process (no MPI):
// the shipped configs, the TOML subset round trip, the mpirun argument lists and Slurm scripts,
// the exact message of every refusal, nesting of any depth, rank counts that would overflow, and
// a fixed-seed fuzz of random mutants that must each give a plan or a message, never a trap.

import ClusterConfig
import Foundation
import SeqparTestSupport
import SequenceParallel
import Testing

/// <package>/cluster-configs
let configFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("cluster-configs")

let shippedConfigs = ["local", "netns-2host", "netns-4host", "two-node-ethernet", "slurm", "slurm-local"]

/// A root launch on a two-core machine called vm.
let twoCores = LaunchMachine(isRoot: true, cores: 2, names: ["localhost", "127.0.0.1", "vm"])

func shipped(_ name: String) throws -> ClusterConfig {
    try ClusterConfig.load(configFolder.appendingPathComponent("\(name).toml").path)
}

@Suite struct ShippedConfigs {
    /// Every registered strategy is a name a config may give (and the refusal of an unknown one,
    /// in RefusedConfigs, lists them).
    @Test func strategyNamesAreTheEngines() throws {
        let names = StrategyName.allCases.map(\.rawValue)
        #expect(names.count == Set(names).count && names.contains("zigzag"), "\(names)")
        for name in names {
            let text = "strategy = \"\(name)\"\n[[host]]\nname = \"a\"\nslots = 1\n"
            #expect(try ClusterConfig.parse(text, file: "c.toml", strategies: names).strategy == name)
        }
    }

    @Test(arguments: shippedConfigs)
    func parsesAndRoundTrips(_ name: String) throws {
        let path = configFolder.appendingPathComponent("\(name).toml").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let document = try TOML.parse(text, file: path)
        let rendered = document.rendered()
        #expect(try TOML.parse(rendered, file: "rendered") == document, "rendered:\n\(rendered)")
        var again = try ClusterConfig.parse(rendered, file: path)
        again.file = path
        #expect(again == (try ClusterConfig.parse(text, file: path)))
    }

    @Test func netnsTwoHosts() throws {
        let config = try shipped("netns-2host")
        #expect(config.hosts == [.init(name: "seqpar-h1", address: "10.213.7.1", slots: 2), .init(name: "seqpar-h2", address: "10.213.7.2", slots: 2)])
        #expect(config.namespaces?.mpirunHost == "seqpar-h1")
        #expect(config.mpi.btl == "tcp,self")
        #expect(config.mpi.interfaces == "10.213.7.0/24")
        #expect(config.bindTo == "none")
        #expect(config.strategy == "zigzag")
    }

    @Test func netnsFourHostsOneRankEach() throws {
        let config = try shipped("netns-4host")
        #expect(config.hosts.map(\.name) == ["seqpar-h1", "seqpar-h2", "seqpar-h3", "seqpar-h4"])
        #expect(config.ranksPerNode == 1)
    }

    @Test func ethernetExample() throws {
        let config = try shipped("two-node-ethernet")
        #expect(config.hosts.count == 2)
        #expect(config.ranksPerNode == 16)
        #expect(config.environment == ["LD_LIBRARY_PATH"])
        #expect(config.mpi.rshAgent == "ssh")
        #expect(config.mpi.mca == [.init(name: "btl_tcp_links", value: "2")])
    }

    @Test func slurmExample() throws {
        let slurm = try #require(try shipped("slurm").slurm)
        #expect(slurm.nodes == 4)
        #expect(slurm.tasksPerNode == 32)
        #expect(slurm.launcher == .srun)
        #expect(slurm.sbatch == ["--exclusive"])
        #expect(slurm.prologue == ["module load openmpi"])
    }
}

@Suite struct TOMLSubset {
    @Test func valuesOfEveryKind() throws {
        let document = try TOML.parse(
            #"""
            # comment
            a = "quote\" backslash\\ \u00e9"   # trailing comment
            b = 'C:\path\no escapes'
            c = -1_000
            d = true
            e = [
                "x",   # inside an array
                'y',
            ]
            f = { k = 1, "quoted key" = "v", inner = { z = false } }
            [t.u]
            g = []
            [[list]]
            n = 1
            [[list]]
            n = 2
            """#, file: "kinds.toml")
        #expect(document["a"]?.value == .string("quote\" backslash\\ é"))
        #expect(document["b"]?.value == .string(#"C:\path\no escapes"#))
        #expect(document["c"]?.value == .integer(-1000))
        #expect(document["d"]?.value == .boolean(true))
        #expect(document["e"]?.value == .array([.string("x"), .string("y")]))
        #expect(document["e"]?.line == 6)
        guard case .table(let f) = document["f"]?.value else { Issue.record("f is not a table"); return }
        #expect(f["quoted key"]?.value == .string("v"))
        let inner = try TOML.parse("z = false", file: "z")
        #expect(f["inner"]?.value == .table(inner))
        guard case .table(let t) = document["t"]?.value, case .table(let u) = t["u"]?.value else { Issue.record("no [t.u]"); return }
        #expect(u["g"]?.value == .array([]))
        guard case .array(let list) = document["list"]?.value else { Issue.record("no [[list]]"); return }
        let (one, two) = (try TOML.parse("n = 1", file: "n"), try TOML.parse("n = 2", file: "n"))
        #expect(list == [.table(one), .table(two)])
        #expect(try TOML.parse(document.rendered(), file: "rendered") == document)
    }

    @Test func hostsAsAnArrayOfInlineTables() throws {
        let config = try ClusterConfig.parse(
            """
            host = [{ name = "a", slots = 2 }, { name = "b", address = "10.0.0.2", slots = 1 }]
            [mpi]
            mca = { btl_tcp_links = 2, mpi_leave_pinned = true, coll = "^hcoll" }
            """, file: "inline.toml")
        #expect(config.hosts == [.init(name: "a", slots: 2), .init(name: "b", address: "10.0.0.2", slots: 1)])
        #expect(config.mpi.mca == [.init(name: "btl_tcp_links", value: "2"), .init(name: "mpi_leave_pinned", value: "1"), .init(name: "coll", value: "^hcoll")])
    }

    @Test func renderedStringsComeBack() throws {
        let awkward = "quote \" backslash \\ apostrophe ' hash # é ∑ 🙂"
        var table = TOMLTable(line: 1)
        table.entries = [TOMLEntry(key: "odd key", value: .string(awkward), line: 1)]
        #expect(try TOML.parse(table.rendered(), file: "r")["odd key"]?.value == .string(awkward))
        // A control character is rendered as an escape, and refused when read back.
        table.entries = [TOMLEntry(key: "k", value: .string("bell \u{7}"), line: 1)]
        #expect(table.rendered() == "k = \"bell \\u0007\"\n")
        #expect(throws: ConfigError(file: "r", line: 1, "a string may not hold the control character U+0007: config values become command-line arguments and script lines")) {
            try TOML.parse(table.rendered(), file: "r")
        }
    }
}

@Suite struct MpirunCommand {
    let binary = "/opt/seqpar/bin/seqpar"

    @Test func netnsTwoHostsFourRanks() throws {
        let plan = try LaunchPlan.mpirun(
            shipped("netns-2host"),
            LaunchRequest(binary: binary, arguments: ["verify", "--causal"], launchDirectory: "/src/Launch"), on: twoCores)
        #expect(plan.ranks == 4)
        #expect(
            plan.command == [
                "/src/Launch/netns-rsh", "--exec", "seqpar-h1",
                "mpirun", "--allow-run-as-root", "-np", "4", "--host", "10.213.7.1:2,10.213.7.2:2", "--map-by", "slot", "--bind-to", "none",
                "-x", "OPENBLAS_NUM_THREADS=1",
                "--mca", "btl", "tcp,self", "--mca", "pml", "ob1",
                "--mca", "btl_tcp_if_include", "10.213.7.0/24", "--mca", "oob_tcp_if_include", "10.213.7.0/24",
                "--mca", "plm_rsh_agent", "/src/Launch/netns-rsh",
                binary, "verify", "--causal", "--strategy", "zigzag",
            ])
    }

    @Test func oneRankPerHostAndAHostfile() throws {
        let plan = try LaunchPlan.mpirun(
            shipped("netns-2host"),
            LaunchRequest(ranksPerNode: 1, binary: binary, arguments: ["info"], hostfile: "/tmp/h", launchDirectory: "/L"),
            on: LaunchMachine(isRoot: false, cores: 2, names: []))
        #expect(plan.ranks == 2)
        #expect(plan.hostfile?.path == "/tmp/h")
        #expect(plan.hostfile?.contents == "10.213.7.1 slots=2\n10.213.7.2 slots=2\n")
        #expect(plan.command.contains("--hostfile") && !plan.command.contains("--host"))
        #expect(plan.command.contains("ppr:1:node"))
        #expect(!plan.command.contains("--allow-run-as-root"))
        #expect(plan.command.suffix(2) == [binary, "info"])  // info takes no --strategy
    }

    @Test func localOversubscribesOnlyWhenSlotsExceedCores() throws {
        let local = try shipped("local")
        let request = LaunchRequest(ranks: 2, binary: binary, arguments: ["run"])
        #expect(try LaunchPlan.mpirun(local, request, on: twoCores).command.contains("--oversubscribe"))
        let wide = LaunchMachine(isRoot: true, cores: 8, names: ["localhost"])
        #expect(try !LaunchPlan.mpirun(local, request, on: wide).command.contains("--oversubscribe"))
        let remote = try ClusterConfig.parse("[[host]]\nname = \"far\"\nslots = 64\n", file: "far.toml")
        #expect(try !LaunchPlan.mpirun(remote, request, on: twoCores).command.contains("--oversubscribe"))
    }

    @Test func explicitStrategyIsKept() throws {
        let plan = try LaunchPlan.mpirun(shipped("local"), LaunchRequest(binary: binary, arguments: ["run", "--strategy=ring"]), on: twoCores)
        #expect(plan.command.suffix(3) == [binary, "run", "--strategy=ring"])
    }

    @Test func forwardedEnvironmentAndMCA() throws {
        let plan = try LaunchPlan.mpirun(shipped("two-node-ethernet"), LaunchRequest(binary: binary, arguments: []), on: twoCores)
        #expect(plan.ranks == 32)
        let text = plan.command.joined(separator: " ")
        #expect(text.contains("-x OPENBLAS_NUM_THREADS=1 -x LD_LIBRARY_PATH"))
        #expect(text.contains("--map-by ppr:16:node --bind-to core"))
        #expect(text.contains("--mca plm_rsh_agent ssh --mca btl_tcp_links 2"))
    }

    @Test func shellLineQuotes() {
        #expect(shellQuoted("plain-word_1.2,a:b") == "plain-word_1.2,a:b")
        #expect(shellQuoted("it's here") == #"'it'\''s here'"#)
        #expect(shellQuoted("") == "''")
    }

    @Test func tooManyRanks() throws {
        #expect(
            throws: ConfigError(
                file: configFolder.appendingPathComponent("netns-2host.toml").path, line: nil,
                "5 ranks exceed the 4 slot(s) of 2 host(s); expected at most 4, more slots, or oversubscribe = true")
        ) {
            try LaunchPlan.mpirun(shipped("netns-2host"), LaunchRequest(ranks: 5, binary: binary, launchDirectory: "/L"), on: twoCores)
        }
        #expect(
            throws: ConfigError(
                file: configFolder.appendingPathComponent("netns-4host.toml").path, line: nil,
                "5 ranks exceed 4 host(s) x 1 rank(s) per node; expected at most 4, more slots, or oversubscribe = true")
        ) {
            try LaunchPlan.mpirun(shipped("netns-4host"), LaunchRequest(ranks: 5, binary: binary, launchDirectory: "/L"), on: twoCores)
        }
        #expect(
            throws: ConfigError(
                file: configFolder.appendingPathComponent("netns-2host.toml").path, line: nil,
                "--ranks-per-node 3 exceeds the 2 slot(s) of a host; expected at most 2, or oversubscribe = true")
        ) {
            try LaunchPlan.mpirun(shipped("netns-2host"), LaunchRequest(ranksPerNode: 3, binary: binary, launchDirectory: "/L"), on: twoCores)
        }
    }

    @Test func netnsNeedsTheLaunchFolder() throws {
        #expect(throws: ConfigError.self) { try LaunchPlan.mpirun(shipped("netns-2host"), LaunchRequest(binary: binary), on: twoCores) }
    }

    @Test func slurmConfigIsNotRunDirectly() throws {
        #expect(throws: ConfigError.self) { try LaunchPlan.mpirun(shipped("slurm"), LaunchRequest(binary: binary), on: twoCores) }
    }
}

@Suite struct SlurmScript {
    let binary = "/shared/seqpar/.build/release/seqpar"

    @Test func srunScript() throws {
        let script = try LaunchPlan.slurmScript(shipped("slurm"), LaunchRequest(binary: binary, arguments: ["verify", "--tokens", "131072", "--causal"]))
        let lines = script.split(separator: "\n").map(String.init)
        #expect(lines.first == "#!/bin/bash")
        #expect(
            lines.filter { $0.hasPrefix("#SBATCH") } == [
                "#SBATCH --job-name=seqpar", "#SBATCH --nodes=4", "#SBATCH --ntasks=128", "#SBATCH --ntasks-per-node=32",
                "#SBATCH --cpus-per-task=1", "#SBATCH --partition=cpu", "#SBATCH --time=00:30:00", "#SBATCH --exclusive",
            ])
        // #SBATCH lines must come before the first command, or sbatch ignores them.
        let firstCommand = try #require(lines.firstIndex { !$0.hasPrefix("#") })
        #expect(lines[firstCommand...].allSatisfy { !$0.hasPrefix("#SBATCH") })
        #expect(lines.contains("module load openmpi"))
        // `module` is defined before set -e and the prologue use it.
        let defineModule = try #require(lines.firstIndex { $0.hasPrefix("type module ") })
        #expect(defineModule < lines.firstIndex(of: "set -eo pipefail")! && lines.firstIndex(of: "set -eo pipefail")! < lines.firstIndex(of: "module load openmpi")!)
        #expect(lines.contains("export OPENBLAS_NUM_THREADS=1"))
        // The example names no transport: Open MPI's own choice (UCX, InfiniBand) stays.
        #expect(!lines.contains { $0.hasPrefix("export OMPI_MCA_") }, "\(lines)")
        #expect(
            lines.last
                == "srun --mpi=pmix --nodes=4 --ntasks=128 --ntasks-per-node=32 --cpus-per-task=1 --cpu-bind=cores \(binary) verify --tokens 131072 --causal --strategy zigzag")
    }

    @Test func mpirunInsideTheAllocation() throws {
        let config = try ClusterConfig.parse(
            """
            blas_threads = 2
            env = ["MY_VAR=a b"]
            [slurm]
            nodes = 2
            ntasks_per_node = 4
            launcher = "mpirun"
            [mpi]
            btl = "self,vader,tcp"
            """, file: "m.toml")
        let script = try LaunchPlan.slurmScript(config, LaunchRequest(ranks: 6, binary: binary, arguments: ["info"]))
        let lines = script.split(separator: "\n").map(String.init)
        #expect(lines.contains("#SBATCH --cpus-per-task=2"))
        #expect(lines.contains("#SBATCH --ntasks=6"))
        #expect(lines.contains("export MY_VAR='a b'"))
        #expect(lines.last == "mpirun -np 6 --map-by ppr:4:node -x OPENBLAS_NUM_THREADS -x MY_VAR --mca btl self,vader,tcp \(binary) info")
    }

    @Test func nodesFollowTheRanks() throws {
        // The example has 4 nodes; 2 ranks at 2 per node need one, at 1 per node two.
        for (ranks, perNode, nodes) in [(2, 2, 1), (2, 1, 2), (3, 2, 2), (64, nil, 2), (200, 64, 4)] as [(Int, Int?, Int)] {
            let script = try LaunchPlan.slurmScript(shipped("slurm"), LaunchRequest(ranks: ranks, ranksPerNode: perNode, binary: binary, arguments: ["info"]))
            let lines = script.split(separator: "\n").map(String.init)
            #expect(lines.contains("#SBATCH --nodes=\(nodes)") && lines.contains("#SBATCH --ntasks=\(ranks)"), "\(ranks) ranks, \(perNode as Any) per node: \(lines)")
            #expect(lines.last?.hasPrefix("srun --mpi=pmix --nodes=\(nodes) --ntasks=\(ranks) ") == true, "\(lines)")
        }
    }

    @Test func localSlurmConfig() throws {
        // cluster-configs/slurm-local.toml: two simulated nodes, no binding (they share the cores), no prologue.
        let script = try LaunchPlan.slurmScript(shipped("slurm-local"), LaunchRequest(ranksPerNode: 1, binary: binary, arguments: ["verify"]))
        let lines = script.split(separator: "\n").map(String.init)
        #expect(lines.contains("#SBATCH --partition=cpu") && lines.contains("#SBATCH --nodes=2") && !lines.contains { $0.hasPrefix("type module") })
        #expect(lines.last == "srun --mpi=pmix --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=1 --cpu-bind=none \(binary) verify --strategy zigzag")
    }

    @Test func srunRefusesMpirunArguments() throws {
        let config = try ClusterConfig.parse("[slurm]\nnodes = 1\n[mpi]\nargs = [\"--report-bindings\"]\n", file: "s.toml")
        #expect(throws: ConfigError(file: "s.toml", line: nil, "[mpi] args are mpirun arguments; expected none with launcher = \"srun\" (or launcher = \"mpirun\")")) {
            try LaunchPlan.slurmScript(config, LaunchRequest(binary: binary))
        }
    }

    @Test func hostConfigHasNoScript() throws {
        #expect(throws: ConfigError.self) { try LaunchPlan.slurmScript(shipped("local"), LaunchRequest(binary: binary)) }
    }
}

/// A bad config and the exact message it gets.
struct BadConfig: CustomTestStringConvertible, Sendable {
    let what: String
    let text: String
    let message: String
    var testDescription: String { what }
}

let host = "[[host]]\nname = \"a\"\nslots = 1\n"

let badConfigs: [BadConfig] = [
    BadConfig(
        what: "unknown top-level key", text: "stratgy = \"ring\"\n" + host,
        message:
            "bad.toml:1: unknown key 'stratgy' in the top level; expected one of host, ranks_per_node, blas_threads, strategy, bind_to, oversubscribe, env, mpi, netns, slurm (did you mean 'strategy'?)"
    ),
    BadConfig(
        what: "unknown host key", text: "[[host]]\nname = \"a\"\nslot = 2\n",
        message: "bad.toml:3: unknown key 'slot' in [[host]]; expected one of name, address, slots (did you mean 'slots'?)"),
    BadConfig(
        what: "unknown mpi key", text: host + "[mpi]\nbtls = \"tcp\"\n",
        message: "bad.toml:5: unknown key 'btls' in [mpi]; expected one of mpirun, btl, pml, interfaces, rsh_agent, mca, args (did you mean 'btl'?)"),
    BadConfig(
        what: "unknown table", text: host + "[mpich]\n",
        message: "bad.toml:4: unknown key 'mpich' in the top level; expected one of host, ranks_per_node, blas_threads, strategy, bind_to, oversubscribe, env, mpi, netns, slurm"),
    BadConfig(
        what: "zero slots", text: "[[host]]\nname = \"a\"\nslots = 0\n",
        message: "bad.toml:3: host 'a' has slots = 0; expected at least 1"),
    BadConfig(
        what: "no slots", text: "# one host\n[[host]]\nname = \"a\"\n",
        message: "bad.toml:2: [[host]] 'a' has no slots; expected slots = N (how many ranks it may run, at least 1)"),
    BadConfig(
        what: "slots as text", text: "[[host]]\nname = \"a\"\nslots = \"2\"\n",
        message: "bad.toml:3: 'slots' in [[host]] is a string; expected an integer"),
    BadConfig(
        what: "host without a name", text: "[[host]]\nslots = 2\n",
        message: "bad.toml:1: [[host]] has no name; expected name = \"…\" (the host's name)"),
    BadConfig(
        what: "empty host name", text: "[[host]]\nname = \"\"\nslots = 2\n",
        message: "bad.toml:2: a host name must not be empty"),
    BadConfig(
        what: "missing host", text: "strategy = \"ring\"\n\n[mpi]\nbtl = \"tcp,self\"\n",
        message: "bad.toml:4: the file describes no host; expected at least one [[host]] table with name and slots (or a [slurm] table, where the allocation names the hosts)"),
    BadConfig(
        what: "the same host twice", text: host + host,
        message: "bad.toml:4: host 'a' is already described on line 1; expected each host once"),
    BadConfig(
        what: "unknown strategy", text: "strategy = \"ringg\"\n" + host,
        message: "bad.toml:1: unknown strategy 'ringg'; expected one of ring, zigzag, heads, mesh, s2, star"),
    BadConfig(
        what: "unknown binding", text: "bind_to = \"cores\"\n" + host,
        message: "bad.toml:1: unknown binding 'cores'; expected one of none, hwthread, core, l2cache, l3cache, socket, numa, board"),
    BadConfig(
        what: "zero BLAS threads", text: "blas_threads = 0\n" + host,
        message: "bad.toml:1: blas_threads = 0 in the top level; expected at least 1"),
    BadConfig(
        what: "more ranks per node than slots", text: "ranks_per_node = 2\n" + host,
        message: "bad.toml:1: ranks_per_node = 2 exceeds the 1 slot(s) of host 'a' (line 2); expected at most 1, or oversubscribe = true"),
    BadConfig(
        what: "bad environment name", text: "env = [\"1X=2\"]\n" + host,
        message: "bad.toml:1: '1X=2' is not NAME or NAME=value (NAME: letters, digits and '_')"),
    BadConfig(
        what: "environment not strings", text: "env = [1]\n" + host,
        message: "bad.toml:1: 'env' in the top level holds an integer; expected an array of one-line strings"),
    BadConfig(
        what: "MCA parameter that [mpi] names", text: host + "[mpi.mca]\nbtl_tcp_if_include = \"eth0\"\n",
        message: "bad.toml:5: MCA parameter 'btl_tcp_if_include' has its own key in [mpi]; expected it as interfaces = … there"),
    BadConfig(
        what: "MCA parameter as an array", text: host + "[mpi.mca]\nx = [1]\n",
        message: "bad.toml:5: MCA parameter 'x' in [mpi.mca] is an array; expected a string, an integer or a boolean"),
    BadConfig(
        what: "netns host that is not a host", text: host + "[netns]\nmpirun_host = \"b\"\n",
        message: "bad.toml:5: mpirun_host 'b' is not one of the hosts; expected one of a"),
    BadConfig(
        what: "slurm without nodes", text: "[slurm]\npartition = \"cpu\"\n",
        message: "bad.toml:1: [slurm] has no nodes; expected nodes = N (how many nodes to allocate)"),
    BadConfig(
        what: "unknown slurm launcher", text: "[slurm]\nnodes = 1\nlauncher = \"aprun\"\n",
        message: "bad.toml:3: unknown launcher 'aprun'; expected srun or mpirun"),
    BadConfig(
        what: "slurm with hosts", text: host + "[slurm]\nnodes = 1\n",
        message: "bad.toml:4: a [slurm] config takes its hosts from the allocation; expected no [[host]] tables beside it"),
    BadConfig(
        what: "key set twice", text: "strategy = \"ring\"\nstrategy = \"zigzag\"\n" + host,
        message: "bad.toml:2: the key 'strategy' is already set on line 1"),
    BadConfig(
        what: "table twice", text: host + "[mpi]\n[mpi]\n",
        message: "bad.toml:5: [mpi] is already defined on line 4"),
    BadConfig(
        what: "unterminated string", text: "strategy = \"ring\n" + host,
        message: "bad.toml:1: unterminated string: expected a closing '\"' on this line"),
    BadConfig(
        what: "float", text: "blas_threads = 1.5\n" + host,
        message: "bad.toml:1: floating-point numbers are not part of this format; every number here is an integer"),
    BadConfig(
        what: "bare word", text: "strategy = ring\n" + host,
        message: "bad.toml:1: expected a value (a \"string\", an integer, true or false, an [array] or an { inline table }), found 'r'"),
    BadConfig(
        what: "missing '='", text: "strategy \"ring\"\n" + host,
        message: "bad.toml:1: expected '=' after the key 'strategy', found '\"'"),
    BadConfig(
        what: "text after a value", text: "blas_threads = 1 2\n" + host,
        message: "bad.toml:1: expected the end of the line after the value, found '2'"),
    BadConfig(
        what: "dotted key", text: "mpi.btl = \"tcp\"\n" + host,
        message: "bad.toml:1: dotted keys ('mpi.…') are not part of this format; write a [mpi] table"),
    BadConfig(
        what: "unknown escape", text: "strategy = \"a\\qb\"\n" + host,
        message: "bad.toml:1: unknown escape '\\q' in a string; use \\\\ for a backslash, or a 'literal string'"),
    BadConfig(
        what: "unclosed array", text: "env = [\"A\",\n\"B\"\n",
        message: "bad.toml:3: unterminated array: expected ']' to close the array opened on line 1"),
    BadConfig(
        what: "unclosed header", text: "[mpi\n" + host,
        message: "bad.toml:1: expected ']' to close the table header, found the end of the line"),
    BadConfig(
        what: "MCA name with shell characters", text: host + "[mpi.mca]\n\"x;touch /tmp/pwned;y\" = 1\n",
        message: "bad.toml:5: MCA parameter name 'x;touch /tmp/pwned;y' in [mpi.mca] is not a name; expected letters, digits and '_' only (e.g. btl_tcp_if_include)"),
    BadConfig(
        what: "host name with a space", text: "[[host]]\nname = \"a b\"\nslots = 1\n",
        message: "bad.toml:2: host name 'a b' is not a host name; expected letters, digits, '-', '_' and '.' (e.g. node-01.cluster), or an IPv4 address"),
    BadConfig(
        what: "host address with a comma", text: "[[host]]\nname = \"a\"\naddress = \"10.0.0.1,evil:4\"\nslots = 1\n",
        message: "bad.toml:3: address '10.0.0.1,evil:4' of host 'a' is not a host name or IPv4 address; expected e.g. 10.0.0.2 or node-01.cluster"),
    BadConfig(
        what: "host name starting with a dash", text: "[[host]]\nname = \"-x\"\nslots = 1\n",
        message: "bad.toml:2: host name '-x' is not a host name; expected letters, digits, '-', '_' and '.' (e.g. node-01.cluster), or an IPv4 address"),
    BadConfig(
        what: "slurm partition of two words", text: "[slurm]\nnodes = 1\npartition = \"cpu --wrap=x\"\n",
        message: "bad.toml:3: partition = 'cpu --wrap=x' in [slurm]; expected one word of letters, digits and _ . , : + @ % - (it is written into an #SBATCH line)"),
    BadConfig(
        what: "table where a value is", text: "mpi = \"tcp\"\n" + host,
        message: "bad.toml:1: 'mpi' in the top level is a string; expected a table ([mpi] or { … })"),
    // Counts far beyond any job: refused when read, before any arithmetic on them (issue 22).
    BadConfig(
        what: "slots beyond any job beside a second host", text: "[[host]]\nname = \"a\"\nslots = 9223372036854775807\n[[host]]\nname = \"b\"\nslots = 1\n",
        message: "bad.toml:3: host 'a' has slots = 9223372036854775807; expected at most 16777216"),
    BadConfig(
        what: "slurm nodes beyond any job", text: "[slurm]\nnodes = 9223372036854775807\nntasks_per_node = 2\n",
        message: "bad.toml:2: nodes = 9223372036854775807 in [slurm]; expected at most 16777216"),
    BadConfig(
        what: "slurm tasks per node beyond any job", text: "[slurm]\nnodes = 2\nntasks_per_node = 9223372036854775807\n",
        message: "bad.toml:3: ntasks_per_node = 9223372036854775807 in [slurm]; expected at most 16777216"),
    BadConfig(
        what: "slurm cpus per task beyond any job", text: "[slurm]\nnodes = 2\ncpus_per_task = 16777217\n",
        message: "bad.toml:3: cpus_per_task = 16777217 in [slurm]; expected at most 16777216"),
    BadConfig(
        what: "ranks per node beyond any job", text: "oversubscribe = true\nranks_per_node = 9223372036854775807\n" + host,
        message: "bad.toml:2: ranks_per_node = 9223372036854775807 in the top level; expected at most 16777216"),
    BadConfig(
        what: "BLAS threads beyond any job", text: "blas_threads = 16777217\n" + host,
        message: "bad.toml:1: blas_threads = 16777217 in the top level; expected at most 16777216"),
    BadConfig(
        what: "integer beyond Int", text: "blas_threads = 99_999_999_999_999_999_999\n" + host,
        message: "bad.toml:1: the integer 99999999999999999999 is out of range; expected one from -9223372036854775808 to 9223372036854775807"),
    // Control characters, escaped or raw, in every kind of string and in keys (issue 22: NULs
    // became extra mpirun arguments in cluster-plan --null).
    BadConfig(
        what: "NUL escapes that would split an MCA value into mpirun arguments",
        text: host + "[mpi.mca]\nbtl_tcp_links = \"1\\u0000--mca\\u0000plm_rsh_agent\\u0000evil\"\n",
        message: "bad.toml:5: a string may not hold the control character U+0000 (NUL): config values become command-line arguments and script lines"),
    BadConfig(
        what: "raw NUL in a string", text: host + "[mpi]\nbtl = \"tcp\u{0}self\"\n",
        message: "bad.toml:5: a string may not hold the control character U+0000 (NUL): config values become command-line arguments and script lines"),
    BadConfig(
        what: "raw NUL in a literal string", text: "strategy = 'ring\u{0}'\n" + host,
        message: "bad.toml:1: a string may not hold the control character U+0000 (NUL): config values become command-line arguments and script lines"),
    BadConfig(
        what: "raw NUL after a value", text: "blas_threads = 1\u{0}\n" + host,
        message: "bad.toml:1: expected the end of the line after the value, found the control character U+0000 (NUL)"),
    BadConfig(
        what: "newline escape in an mpirun argument", text: host + "[mpi]\nargs = [\"--x\",\n  \"a\\nb\"]\n",
        message: "bad.toml:6: a string may not hold the control character U+000A (line feed): config values become command-line arguments and script lines"),
    BadConfig(
        what: "tab escape in an environment value", text: "env = [\"A=b\\tc\"]\n" + host,
        message: "bad.toml:1: a string may not hold the control character U+0009 (tab): config values become command-line arguments and script lines"),
    BadConfig(
        what: "raw tab in a string", text: "strategy = \"ring\tx\"\n" + host,
        message: "bad.toml:1: a string may not hold the control character U+0009 (tab): config values become command-line arguments and script lines"),
    BadConfig(
        what: "raw carriage return in a string", text: "strategy = \"ri\rng\"\n" + host,
        message: "bad.toml:1: a string may not hold the control character U+000D (carriage return): config values become command-line arguments and script lines"),
    BadConfig(
        what: "DEL in a prologue line", text: "[slurm]\nnodes = 1\nprologue = [\"echo \\u007f\"]\n",
        message: "bad.toml:3: a string may not hold the control character U+007F (delete): config values become command-line arguments and script lines"),
    BadConfig(
        what: "raw C1 control in a job name", text: "[slurm]\nnodes = 1\njob_name = \"x\u{9B}y\"\n",
        message: "bad.toml:3: a string may not hold the control character U+009B: config values become command-line arguments and script lines"),
    BadConfig(
        what: "escape character in a quoted key", text: host + "[mpi.mca]\n\"a\\u001bb\" = 1\n",
        message: "bad.toml:5: a key may not hold the control character U+001B (escape): config values become command-line arguments and script lines"),
    BadConfig(
        what: "\\u escape with a sign", text: "strategy = \"\\u+041\"\n" + host,
        message: "bad.toml:1: expected four hex digits after \\u in a string"),
    // Multi-line strings, wherever a value goes.
    BadConfig(
        what: "multi-line literal string", text: "strategy = '''ring'''\n" + host,
        message: "bad.toml:1: multi-line strings ('''…''') are not supported in a cluster config; write the value on one line, in \"…\" or '…'"),
    BadConfig(
        what: "multi-line basic string in an array", text: "env = [\"\"\"A\"\"\"]\n" + host,
        message: "bad.toml:1: multi-line strings (\"\"\"…\"\"\") are not supported in a cluster config; write the value on one line, in \"…\" or '…'"),
    BadConfig(
        what: "multi-line string over lines", text: "[slurm]\nnodes = 1\nprologue = ['''\nmodule load openmpi\n''']\n",
        message: "bad.toml:3: multi-line strings ('''…''') are not supported in a cluster config; write the value on one line, in \"…\" or '…'"),
    // IPv6 addresses: Open MPI's --host (host:slots) and hostfile cannot take them.
    BadConfig(
        what: "IPv6 address", text: "[[host]]\nname = \"a\"\naddress = \"::1\"\nslots = 2\n",
        message: "bad.toml:3: host 'a' is reached by the IPv6 address '::1', which Open MPI's --host and hostfile cannot take; expected a host name or an IPv4 address"),
    BadConfig(
        what: "bracketed IPv6 address", text: "[[host]]\nname = \"a\"\naddress = \"[fe80::1]\"\nslots = 2\n",
        message: "bad.toml:3: host 'a' is reached by the IPv6 address '[fe80::1]', which Open MPI's --host and hostfile cannot take; expected a host name or an IPv4 address"),
    BadConfig(
        what: "IPv6 address as the host name", text: "[[host]]\nname = \"fe80::1\"\nslots = 2\n",
        message: "bad.toml:2: host 'fe80::1' is reached by the IPv6 address 'fe80::1', which Open MPI's --host and hostfile cannot take; expected a host name or an IPv4 address"),
]

@Suite struct RefusedConfigs {
    @Test(arguments: badConfigs)
    func refused(_ bad: BadConfig) {
        do {
            let config = try ClusterConfig.parse(bad.text, file: "bad.toml", strategies: StrategyName.allCases.map(\.rawValue))
            Issue.record("accepted \(bad.what): \(config)")
        } catch let error as ConfigError {
            #expect(error.description == bad.message)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func unreadableFile() {
        #expect(throws: ConfigError(file: "/no/such/config.toml", line: nil, "cannot read the file (is the path right? configs live in cluster-configs/)")) {
            try ClusterConfig.load("/no/such/config.toml")
        }
    }
}

@Suite struct ScriptSafety {
    @Test func hostNameGrammar() {
        for good in ["a", "node-01", "node-01.cluster.example", "seqpar-h1", "10.0.0.2", "n_1"] {
            #expect(ClusterConfig.isHostName(good) && !ClusterConfig.isIPv6Address(good), "\(good)")
        }
        for bad in ["", "a b", "a,b", "a;b", "-a", "a-", "a..b", "a\nb", "$(x)", "a:b:c;d", "a/b", "::1", "fe80::1", "[::1]", "a:2"] {
            #expect(!ClusterConfig.isHostName(bad), "\(bad)")
        }
        for ipv6 in ["::1", "fe80::1", "[::1]", "2620:10d:c083:150e::3000:1", "::ffff:10.0.0.1"] {
            #expect(ClusterConfig.isIPv6Address(ipv6), "\(ipv6)")
        }
    }

    /// A config file name with a newline stays inside the script's comment.
    @Test func fileNameInTheComment() throws {
        var config = try ClusterConfig.parse("[slurm]\nnodes = 1\n", file: "x")
        config.file = "evil\ntouch /tmp/seqpar-pwned\n#.toml"
        let script = try LaunchPlan.slurmScript(config, LaunchRequest(binary: "/bin/seqpar", arguments: ["info"]))
        let lines = script.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[1] == "# seqpar batch job, written by `seqpar cluster-plan --slurm` from evil\\u{a}touch /tmp/seqpar-pwned\\u{a}#.toml.", "\(script)")
        #expect(!lines.contains { $0.hasPrefix("touch") }, "\(script)")
    }

    /// An MCA name that is not a name is refused even when it did not come from a file.
    @Test func mcaNameCheckedWhenWriting() throws {
        var config = try ClusterConfig.parse("[slurm]\nnodes = 1\n", file: "x.toml")
        config.mpi.mca = [ClusterConfig.MCAParameter(name: "x;touch /tmp/seqpar-pwned;y", value: "1")]
        #expect(throws: ConfigError.self) { try LaunchPlan.slurmScript(config, LaunchRequest(binary: "/bin/seqpar", arguments: ["info"])) }
    }
}

/// Nesting of any depth is refused before the parser recurses (issue 22: 50,000 deep overflowed
/// the stack, SIGSEGV; 10,000 deep only fitted in it).
@Suite struct DeepNesting {
    static let tooDeep = "arrays and inline tables nest more than 32 deep here; expected at most 32 (a cluster config needs two)"
    static let longHeader = "the table header names more than 32 keys; expected at most 32 (a cluster config needs two)"

    @Test(arguments: [33, 50_000, 1_000_000])
    func arrays(_ depth: Int) {
        let text = "x = " + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "\n"
        #expect(throws: ConfigError(file: "deep.toml", line: 1, Self.tooDeep)) { try TOML.parse(text, file: "deep.toml") }
    }

    @Test(arguments: [33, 50_000, 1_000_000])
    func inlineTables(_ depth: Int) {
        let text = "x = " + String(repeating: "{a = ", count: depth) + "1" + String(repeating: "}", count: depth) + "\n"
        #expect(throws: ConfigError(file: "deep.toml", line: 1, Self.tooDeep)) { try TOML.parse(text, file: "deep.toml") }
    }

    @Test(arguments: [33, 50_000, 1_000_000])
    func arraysAndTablesInTurn(_ depth: Int) {
        let text = "host = " + String(repeating: "[{a = ", count: depth / 2 + 1)
        #expect(throws: ConfigError(file: "deep.toml", line: 1, Self.tooDeep)) { try ClusterConfig.parse(text, file: "deep.toml") }
    }

    /// One bracket a line: the line named is the one where the limit is passed.
    @Test func overLines() {
        let text = "x = " + String(repeating: "[\n", count: 50_000)
        #expect(throws: ConfigError(file: "deep.toml", line: 33, Self.tooDeep)) { try TOML.parse(text, file: "deep.toml") }
    }

    @Test(arguments: [33, 50_000, 1_000_000])
    func headers(_ keys: Int) {
        let path = Array(repeating: "a", count: keys).joined(separator: ".")
        #expect(throws: ConfigError(file: "deep.toml", line: 2, Self.longHeader)) { try TOML.parse("# c\n[\(path)]\n", file: "deep.toml") }
        #expect(throws: ConfigError(file: "deep.toml", line: 1, Self.longHeader)) { try TOML.parse("[[\(path)]]\n", file: "deep.toml") }
    }

    @Test func thirtyTwoDeepIsRead() throws {
        let arrays = try TOML.parse("x = " + String(repeating: "[", count: 32) + String(repeating: "]", count: 32), file: "d")
        var value = try #require(arrays["x"]?.value)
        for _ in 1 ..< 32 {
            guard case .array(let inner) = value, inner.count == 1 else { Issue.record("not 32 arrays deep: \(value)"); return }
            value = inner[0]
        }
        #expect(value == .array([]))
        let tables = try TOML.parse("x = " + String(repeating: "{a = ", count: 32) + "1" + String(repeating: "}", count: 32), file: "d")
        #expect(try TOML.parse(tables.rendered(), file: "rendered") == tables)
        let path = Array(repeating: "a", count: 32).joined(separator: ".")
        #expect(try TOML.parse("[\(path)]\nb = 1\n", file: "d").rendered().hasSuffix("[\(path)]\nb = 1\n"))
    }
}

/// Rank counts whose arithmetic would overflow are refused with a message (issue 22: slots =
/// Int.max beside a second host trapped in LaunchPlan). Counts read from a file are bounded
/// when read (RefusedConfigs); these come from a config made in code, or from the request.
@Suite struct RankArithmetic {
    let binary = "/bin/seqpar"
    static let limit = ClusterConfig.maxCount

    func hosts(_ slots: [Int], ranksPerNode: Int? = nil, oversubscribe: Bool = false) -> ClusterConfig {
        var config = ClusterConfig(file: "code.toml")
        config.hosts = slots.enumerated().map { ClusterConfig.Host(name: "h\($0.offset)", slots: $0.element) }
        (config.ranksPerNode, config.oversubscribe) = (ranksPerNode, oversubscribe)
        return config
    }

    func slurm(nodes: Int, tasksPerNode: Int) throws -> ClusterConfig {
        var config = try ClusterConfig.parse("[slurm]\nnodes = 1\n", file: "code.toml")
        config.slurm?.nodes = nodes
        config.slurm?.tasksPerNode = tasksPerNode
        return config
    }

    @Test func slotsThatOverflowTheirSum() throws {
        let config = hosts([.max, 2])
        let message = "the slots of 2 host(s) make more than \(Int.max) ranks; expected at most \(Self.limit) in all (or fewer with --ranks)"
        #expect(throws: ConfigError(file: "code.toml", line: nil, message)) { try LaunchPlan.mpirun(config, LaunchRequest(binary: binary), on: twoCores) }
        let four = try LaunchPlan.mpirun(config, LaunchRequest(ranks: 4, binary: binary), on: twoCores)
        #expect(four.ranks == 4 && four.command.contains("h0:\(Int.max),h1:2"), "\(four.command)")
    }

    @Test func slotsWithinBoundsWhoseSumIsTooMany() throws {
        let text = "[[host]]\nname = \"a\"\nslots = 16777216\n[[host]]\nname = \"b\"\nslots = 16777216\n"
        let config = try ClusterConfig.parse(text, file: "big.toml")
        let message = "the slots of 2 host(s) make 33554432 ranks; expected at most \(Self.limit) in all (or fewer with --ranks)"
        #expect(throws: ConfigError(file: "big.toml", line: nil, message)) { try LaunchPlan.mpirun(config, LaunchRequest(binary: binary), on: twoCores) }
        #expect(try LaunchPlan.mpirun(config, LaunchRequest(ranks: 8, binary: binary), on: twoCores).ranks == 8)
    }

    @Test func ranksPerNodeThatOverflowsTheProduct() throws {
        let config = hosts([1, 1], ranksPerNode: .max, oversubscribe: true)
        let message = "2 host(s) x \(Int.max) rank(s) per node make more than \(Int.max) ranks; expected at most \(Self.limit) in all (or fewer with --ranks)"
        #expect(throws: ConfigError(file: "code.toml", line: nil, message)) { try LaunchPlan.mpirun(config, LaunchRequest(binary: binary), on: twoCores) }
    }

    @Test func slurmNodesTimesTasks() throws {
        let message = "\(Int.max) node(s) x 2 task(s) make more than \(Int.max) ranks; expected at most \(Self.limit) in all (or fewer with --ranks)"
        #expect(throws: ConfigError(file: "code.toml", line: nil, message)) {
            try LaunchPlan.slurmScript(try slurm(nodes: .max, tasksPerNode: 2), LaunchRequest(binary: binary))
        }
        // Both at the bound: read from a file, too many in all, and fine with --ranks.
        let config = try ClusterConfig.parse("[slurm]\nnodes = 16777216\nntasks_per_node = 16777216\n", file: "s.toml")
        #expect(
            throws: ConfigError(
                file: "s.toml", line: nil, "16777216 node(s) x 16777216 task(s) make 281474976710656 ranks; expected at most \(Self.limit) in all (or fewer with --ranks)")
        ) {
            try LaunchPlan.slurmScript(config, LaunchRequest(binary: binary))
        }
        let script = try LaunchPlan.slurmScript(config, LaunchRequest(ranks: 4, binary: binary, arguments: ["info"]))
        #expect(script.contains("#SBATCH --nodes=1\n#SBATCH --ntasks=4\n#SBATCH --ntasks-per-node=16777216\n"), "\(script)")
        // Ranks that need every node of a huge per-node count: no overflow in the rounding up.
        let wide = try LaunchPlan.slurmScript(slurm(nodes: 3, tasksPerNode: .max), LaunchRequest(ranks: 5, binary: binary))
        #expect(wide.contains("#SBATCH --nodes=1\n"), "\(wide)")
    }

    @Test func requestsBeyondAnyJob() throws {
        let local = try shipped("local")
        let slurm = try shipped("slurm")
        for (request, option) in [(LaunchRequest(ranks: .max, binary: binary), "--ranks"), (LaunchRequest(ranksPerNode: .max, binary: binary), "--ranks-per-node")] {
            let message = "\(option) \(Int.max): expected at most \(Self.limit)"
            #expect(throws: ConfigError(file: local.file, line: nil, message)) { try LaunchPlan.mpirun(local, request, on: twoCores) }
            #expect(throws: ConfigError(file: slurm.file, line: nil, message)) { try LaunchPlan.slurmScript(slurm, request) }
        }
    }
}

/// Random mutants of valid configs: each is read and planned, and either gives a plan or a
/// ConfigError naming the file; a trap would end the test process (issue 22: 19 of 640 did).
@Suite struct MutantConfigs {
    static let inserts: [String] = [
        "[", "]", "{", "}", "\"", "'", "'''", "\"\"\"", "=", ",", ".", "#", "\n", "\r", "\t", "\u{0}", "\\u0000", "\\", "\u{7F}", "\u{9B}",
        "9223372036854775807", "-9223372036854775808", "99999999999999999999", "16777217", "0", "-1", "1.5",
        "::1", "[[host]]\n", "[slurm]\n", "[mpi.mca]\n", "slots = ", "nodes = 9223372036854775807\n",
        String(repeating: "[", count: 50_000), String(repeating: "{a = ", count: 50_000), String(repeating: "a.", count: 50_000),
        "é", "\u{FEFF}",
    ]

    static func seeds() throws -> [String] {
        try shippedConfigs.map { try String(contentsOf: configFolder.appendingPathComponent("\($0).toml"), encoding: .utf8) } + [
            "host = [{ name = \"a\", slots = 2 }, { name = \"b\", address = \"10.0.0.2\", slots = 1 }]\n[mpi]\nmca = { btl_tcp_links = 2, coll = '^hcoll' }\n",
            "env = [\"A=1\",\n  'B',\n]\noversubscribe = true\nranks_per_node = 3\n[[host]]\nname = \"n1\"\nslots = 2\n",
        ]
    }

    static func mutate(_ text: String, _ random: inout SeededGenerator) -> [UInt8] {
        var bytes = Array(text.utf8)
        for _ in 0 ... random.below(3) {
            let at = random.below(bytes.count + 1)
            switch random.below(6) {
            case 0 where at < bytes.count: bytes[at] ^= UInt8(1 << random.below(8))
            case 1 where at < bytes.count: bytes.removeSubrange(at ..< min(bytes.count, at + 1 + random.below(16)))
            case 2:
                // Duplicate a line (a key or header twice).
                var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
                let line = random.below(lines.count)
                lines.insert(lines[line], at: random.below(lines.count + 1))
                bytes = Array(lines.joined(separator: [UInt8(ascii: "\n")]))
            case 3:
                // A digit run becomes a huge number.
                if let digit = bytes[at...].firstIndex(where: { (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains($0) }) {
                    bytes.insert(contentsOf: Array("9223372036854775807".utf8), at: digit)
                }
            default: bytes.insert(contentsOf: Array(inserts[random.below(inserts.count)].utf8), at: at)
            }
        }
        return bytes
    }

    @Test func neverTrapAndAlwaysSaySomething() throws {
        var random = SeededGenerator(state: 22)
        let seeds = try Self.seeds()
        let strategies = StrategyName.allCases.map(\.rawValue)
        let machine = LaunchMachine(isRoot: false, cores: 4, names: ["localhost"])
        var (planned, refused) = (0, 0)
        for index in 0 ..< 600 {
            let bytes = Self.mutate(seeds[index % seeds.count], &random)
            let file = "mutant-\(index).toml"
            do {
                // What ClusterConfig.load does with the file's bytes.
                guard let text = String(bytes: bytes, encoding: .utf8) else { refused += 1; continue }
                let config = try ClusterConfig.parse(text, file: file, strategies: strategies)
                if config.slurm != nil {
                    _ = try LaunchPlan.slurmScript(config, LaunchRequest(binary: "/bin/seqpar", arguments: ["info"]))
                } else {
                    let plan = try LaunchPlan.mpirun(config, LaunchRequest(binary: "/bin/seqpar", arguments: ["run"], launchDirectory: "/L"), on: machine)
                    // No argument of the command may carry a NUL into cluster-plan --null.
                    #expect(!plan.command.contains { $0.unicodeScalars.contains("\u{0}") }, "\(file): \(plan.command)")
                }
                planned += 1
            } catch let error as ConfigError {
                #expect(error.file == file && !error.message.isEmpty, "\(file): \(error)")
                refused += 1
            } catch {
                Issue.record("\(file): not a ConfigError: \(error)\n\(String(decoding: bytes.prefix(2000), as: UTF8.self))")
            }
        }
        #expect(planned + refused == 600)
        #expect(planned > 0 && refused > 0, "\(planned) planned, \(refused) refused: the mutants should reach both")
    }
}
