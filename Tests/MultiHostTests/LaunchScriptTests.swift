// The launch scripts that need no namespaces: Launch/slurm's batch script (its text and shell
// syntax here; SlurmTests.swift submits such scripts to a real, local Slurm) and
// Launch/cluster's printed command and refusals.

import Foundation
import Testing

@Suite struct LaunchScriptTests {
    var binary: String {
        ProcessInfo.processInfo.environment["SEQPAR_BIN"] ?? packageRoot.appendingPathComponent(".build/release/seqpar").path
    }

    @Test func slurmWritesABatchScript() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-test-\(UUID().uuidString).sbatch")
        defer { try? FileManager.default.removeItem(at: file) }
        let written = try run([launch("slurm"), clusterConfig("slurm"), "--output", file.path, "verify", "--tokens", "131072", "--causal"])
        #expect(written.status == 0, "\(written.transcript)")
        #expect(written.stderr.contains("wrote \(file.path)"))
        let script = try String(contentsOf: file, encoding: .utf8)
        let lines = script.split(separator: "\n").map(String.init)
        #expect(lines.first == "#!/bin/bash")
        #expect(lines.contains("#SBATCH --nodes=4") && lines.contains("#SBATCH --ntasks-per-node=32") && lines.contains("#SBATCH --exclusive"))
        let srun = try #require(lines.last)
        #expect(srun.hasPrefix("srun --mpi=pmix --nodes=4 --ntasks=128 "), "\(srun)")
        // The binary is written with an absolute path: the job starts in another folder.
        #expect(srun.contains(" /") && srun.hasSuffix("/seqpar verify --tokens 131072 --causal --strategy zigzag"), "\(srun)")
        let syntax = try run(["bash", "-n", file.path])
        #expect(syntax.status == 0, "\(syntax.transcript)")
        #expect(FileManager.default.isExecutableFile(atPath: file.path))
    }

    @Test func slurmSubmitNeedsSbatch() throws {
        // A PATH with only the tools Launch/slurm uses, so the test means the same on a Slurm login node.
        let tools = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tools, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tools) }
        for tool in ["bash", "dirname", "basename", "chmod", "mktemp", "rm"] {
            let found = try #require(["/usr/bin", "/bin"].map { "\($0)/\(tool)" }.first { FileManager.default.isExecutableFile(atPath: $0) }, "no \(tool)")
            try FileManager.default.createSymbolicLink(atPath: tools.appendingPathComponent(tool).path, withDestinationPath: found)
        }
        let submit = try run(["env", "PATH=\(tools.path)", "SEQPAR_BIN=\(binary)", launch("slurm"), clusterConfig("slurm"), "--submit", "info"])
        #expect(submit.status == 1, "\(submit.transcript)")
        #expect(submit.stderr.contains("--submit needs sbatch"), "\(submit.transcript)")
    }

    @Test func slurmRefusesAHostConfig() throws {
        let refused = try run([launch("slurm"), clusterConfig("local"), "info"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("local.toml: no [slurm] table"), "\(refused.transcript)")
    }

    @Test func clusterDryRunPrintsTheCommand() throws {
        let dry = try run([launch("cluster"), clusterConfig("local"), "--ranks", "2", "--dry-run", "verify", "--causal"])
        #expect(dry.status == 0, "\(dry.transcript)")
        #expect(dry.stdout.isEmpty)
        #expect(dry.stderr.hasPrefix("Launch/cluster: mpirun "), "\(dry.transcript)")
        #expect(dry.stderr.contains(" -np 2 --hostfile "), "\(dry.transcript)")
        #expect(dry.stderr.contains("seqpar verify --causal --strategy zigzag"), "\(dry.transcript)")
    }

    @Test func clusterRefusesABadConfig() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-test-\(UUID().uuidString).toml")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data("[[host]]\nname = \"a\"\nslots = 0\n".utf8).write(to: file)
        let refused = try run([launch("cluster"), file.path, "info"])
        #expect(refused.status == 1)
        #expect(refused.stderr == "seqpar cluster-plan: \(file.path):3: host 'a' has slots = 0; expected at least 1\n", "\(refused.transcript)")
    }

    @Test func clusterRunsOnThisMachine() throws {
        let info = try run([launch("cluster"), clusterConfig("local"), "--ranks", "2", "info", "--json", "--sgemm-size", "128"])
        #expect(info.status == 0, "\(info.transcript)")
        #expect(try rankHosts(info).count == 2)
    }

    @Test func planStartsNoMPI() throws {
        // cluster-plan must run where mpirun cannot: with no MPI launcher environment at all.
        let plan = try run(["env", "-i", "PATH=/usr/bin:/bin", binary, "cluster-plan", clusterConfig("netns-4host"), "--json", "--", "info"])
        #expect(plan.status == 0, "\(plan.transcript)")
        let object = try JSONSerialization.jsonObject(with: Data(plan.stdout.utf8)) as? [String: Any]
        #expect(object?["ranks"] as? Int == 4)
        #expect((object?["command"] as? [String])?.contains("ppr:1:node") == true)
    }
}
