// The launch scripts that need no namespaces: Launch/slurm's batch script (its text and shell
// syntax here; SlurmTests.swift submits such scripts to a real, local Slurm) and
// Launch/cluster's printed command and refusals.

import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct LaunchScriptTests {
    var binary: String { binaryUnderTest }

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

    /// A failing removal (a temporary on a file system gone read-only) must not stop the rest of
    /// the clean-up: the job folder still goes, and the job's own status is returned.
    @Test(.enabled(if: geteuid() == 0, "needs root to mount a read-only tmpfs"))
    func cleanupGoesOnPastAFailingRemoval() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-test-\(UUID().uuidString)")
        let readOnly = base.appendingPathComponent("ro").path
        try FileManager.default.createDirectory(atPath: readOnly, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: base) }
        try #require(mount("tmpfs", readOnly, "tmpfs", 0, "size=64k") == 0, "mount: \(String(cString: strerror(errno)))")
        defer { umount2(readOnly, Int32(MNT_DETACH)) }
        let stuck = "\(readOnly)/.o.npy.seqpar-abcdef"
        try #require(FileManager.default.createFile(atPath: stuck, contents: Data([1])))
        try #require(mount("tmpfs", readOnly, "tmpfs", UInt(MS_REMOUNT | MS_RDONLY), "size=64k") == 0, "remount: \(String(cString: strerror(errno)))")
        let marker = base.appendingPathComponent("job-dir").path
        // The "launcher" lists the stuck temporary as its output, says where its job folder is, and fails.
        let job = "printf '%s\\0' '\(stuck)' > \"$SEQPAR_JOB_DIR/outputs\"; echo \"$SEQPAR_JOB_DIR\" > '\(marker)'; exit 3"
        let script = "set -euo pipefail; source '\(launch("common.sh"))'; seqpar_run_job bash -c \"$1\"; echo unreachable"
        let outcome = try run(["bash", "-c", script, "cleanup-test", job], seconds: 60)
        #expect(outcome.status == 3, "the job's status is lost\n\(outcome.transcript)")
        let jobDirectory = try String(contentsOfFile: marker, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!jobDirectory.isEmpty && !FileManager.default.fileExists(atPath: jobDirectory), "the job folder \(jobDirectory) was left behind")
        #expect(FileManager.default.fileExists(atPath: stuck), "the test's temporary was removed: the file system was not read-only, so nothing was tested")
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

    /// Configs that trapped or injected arguments (issue 22), through the command Launch/cluster
    /// runs: each ends with one line naming the file, the line and what is wrong, exit 1, and
    /// nothing on stdout for Launch/cluster to run.
    @Test func clusterPlanRefusesHostileConfigs() throws {
        let host = "[[host]]\nname = \"a\"\nslots = 1\n"
        let cases: [(text: String, line: Int, message: String)] = [
            (host + "[[host]]\nname = \"b\"\nslots = 9223372036854775807\n", 6, "host 'b' has slots = 9223372036854775807; expected at most 16777216"),
            (
                "x = " + String(repeating: "[", count: 50_000) + String(repeating: "]", count: 50_000) + "\n" + host, 1,
                "arrays and inline tables nest more than 32 deep here; expected at most 32 (a cluster config needs two)"
            ),
            (
                "x = " + String(repeating: "{a = ", count: 1_000_000) + "\n", 1,
                "arrays and inline tables nest more than 32 deep here; expected at most 32 (a cluster config needs two)"
            ),
            (
                host + "[mpi.mca]\nbtl_tcp_links = \"1\\u0000--mca\\u0000plm_rsh_agent\\u0000evil\"\n", 5,
                "a string may not hold the control character U+0000 (NUL): config values become command-line arguments and script lines"
            ),
            (
                host + "[mpi.mca]\nbtl_tcp_links = \"1\u{0}--mca\u{0}plm_rsh_agent\u{0}evil\"\n", 5,
                "a string may not hold the control character U+0000 (NUL): config values become command-line arguments and script lines"
            ),
        ]
        for (index, bad) in cases.enumerated() {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-test-\(UUID().uuidString).toml")
            defer { try? FileManager.default.removeItem(at: file) }
            try Data(bad.text.utf8).write(to: file)
            let refused = try run([binary, "cluster-plan", "--null", file.path, "--", "info"], seconds: 60)
            #expect(refused.status == 1, "case \(index)\n\(refused.transcript)")
            #expect(refused.stdout.isEmpty, "case \(index)\n\(refused.transcript)")
            #expect(refused.stderr == "seqpar cluster-plan: \(file.path):\(bad.line): \(bad.message)\n", "case \(index)\n\(refused.transcript)")
        }
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

    /// Values that a shell would act on (quotes, $(…), ;, newlines) in a config file's name, its
    /// MCA values and environment, and in seqpar's arguments: the batch script, run by bash with
    /// a fake srun, runs srun and nothing else, and srun receives every argument unchanged.
    @Test func slurmScriptRunsNothingElse() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-inject-\(UUID().uuidString)")
        let bin = folder.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let marker = folder.appendingPathComponent("pwned").path
        // A file name holds no '/': its injected line touches a name relative to where bash runs
        // (the package root, as `run` starts every command there).
        let relative = "seqpar-pwned-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: packageRoot.appendingPathComponent(relative).path) }
        let fake = bin.appendingPathComponent("srun")
        try Data("#!/bin/bash\nprintf '%s\\0' \"$@\" > \"$0.args\"\nprintf '%s' \"$OMPI_MCA_btl_foo|$SEQPAR_X\" > \"$0.env\"\n".utf8).write(to: fake)
        chmod(fake.path, 0o755)
        // Foundation refuses a newline in a file name; the file system does not: written, then renamed.
        let plain = folder.appendingPathComponent("plain.toml")
        let config = folder.path + "/evil\ntouch \(relative)\n.toml"
        try Data(
            """
            env = ["SEQPAR_X=$(touch \(marker))'\\"; touch \(marker)"]
            [slurm]
            nodes = 1
            [mpi.mca]
            btl_foo = "a'b\\"c; touch \(marker) $(touch \(marker))"

            """.utf8
        ).write(to: plain)
        #expect(rename(plain.path, config) == 0)
        let script = folder.appendingPathComponent("job.sbatch")
        let arguments = ["run", "--out", "a\nb c", "it's", "$(touch \(marker))", "; touch \(marker)", "`touch \(marker)`"]
        let written = try run([launch("slurm"), config, "--output", script.path] + arguments)
        #expect(written.status == 0, "\(written.transcript)")
        let ran = try run(["env", "PATH=\(bin.path):/usr/bin:/bin", "bash", script.path])
        #expect(ran.status == 0, "\(ran.transcript)")
        #expect(!FileManager.default.fileExists(atPath: packageRoot.appendingPathComponent(relative).path), "the file name's line ran")
        #expect(!FileManager.default.fileExists(atPath: marker), "the script ran an injected command:\n\((try? String(contentsOf: script, encoding: .utf8)) ?? "")")
        let received = try Data(contentsOf: URL(fileURLWithPath: fake.path + ".args")).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        #expect(Array(received.suffix(arguments.count)) == arguments, "\(received)")
        let environment = try String(contentsOfFile: fake.path + ".env", encoding: .utf8)
        #expect(environment == "a'b\"c; touch \(marker) $(touch \(marker))|$(touch \(marker))'\"; touch \(marker)", "\(environment)")
    }

    /// Launch/cluster hands seqpar's arguments to mpirun unchanged, whatever they hold.
    @Test func clusterPassesArgumentsUnchanged() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-args-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let fake = folder.appendingPathComponent("mpirun")
        try Data("#!/bin/bash\nprintf '%s\\0' \"$@\" > \"$0.args\"\n".utf8).write(to: fake)
        chmod(fake.path, 0o755)
        let config = folder.appendingPathComponent("fake.toml")
        try Data("[[host]]\nname = \"localhost\"\nslots = 2\n[mpi]\nmpirun = \"\(fake.path)\"\n".utf8).write(to: config)
        let arguments = ["run", "--out", "a\nb c", "it's", "$(touch x)", " ", "", "--strategy", "ring"]
        let ran = try run([launch("cluster"), config.path, "--ranks", "1"] + arguments)
        #expect(ran.status == 0, "\(ran.transcript)")
        let received = try Data(contentsOf: URL(fileURLWithPath: fake.path + ".args")).split(separator: 0, omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }.dropLast()
        #expect(Array(received.suffix(arguments.count)) == arguments, "\(Array(received))")
    }
}
