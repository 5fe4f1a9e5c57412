// Launch/slurm's batch scripts under a real Slurm: Launch/slurm-local brings up slurmctld and two
// slurmd (simulated nodes n1, n2) on this machine, from Debian's slurm-wlm and munge (which
// Launch/test installs when they are missing, as part of its set-up); the test writes scripts from cluster-configs/slurm.toml (its module-load
// prologue left out) for the srun and mpirun launchers on one and two nodes, submits them with
// sbatch (one through Launch/slurm --submit), waits for each job (bounded), and asserts its state,
// exit code, node count and PASS; a verify that cannot pass must end as FAILED. Slurm's daemons need
// root and the packages installed; where either is missing the suite is skipped with the reason in
// the output, never passed.

import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

enum LocalSlurm {
    static let stateDirectory = "/run/seqpar-slurm"
    static var conf: String { stateDirectory + "/slurm.conf" }

    static let installed = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/sbin/munged"]
        .allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }

    /// Root, and Slurm installed (by Launch/test's set-up: `Launch/slurm-local install`).
    static let available: Bool = geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/timeout") && installed

    /// One local Slurm per machine: test runs of other checkouts wait here for each other.
    static func exclusive<T>(_ body: () throws -> T) throws -> T {
        let lock = open("/run/seqpar-slurm.lock", O_CREAT | O_RDWR, 0o644)
        try #require(lock >= 0, "cannot open /run/seqpar-slurm.lock")
        defer { close(lock) }
        flock(lock, LOCK_EX)
        defer { flock(lock, LOCK_UN) }
        return try body()
    }

    /// Whether `pid` runs: a zombie (a stopped daemon that init has not reaped yet) does not.
    static func running(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.range(of: ") ", options: .backwards)
        else { return false }
        return !stat[close.upperBound...].hasPrefix("Z")
    }

    /// The pids of the daemons Launch/slurm-local started, from its pid files.
    static func daemonPids() -> [Int32] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: stateDirectory)) ?? []
        return files.filter { $0.hasSuffix(".pid") }.compactMap {
            (try? String(contentsOfFile: stateDirectory + "/" + $0, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
    }
}

/// A job's record in `scontrol show job -o`.
struct SlurmJob {
    let id: String
    var fields: [String: String] = [:]
    var state: String { fields["JobState"] ?? "?" }
    static let finished: Set = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"]
}

/// Runs a command with Slurm's and Open MPI's environment, in `folder`.
func slurmRun(_ arguments: [String], in folder: URL, environment extra: [String: String] = [:], seconds: Int = 120) throws -> Outcome {
    var environment = testEnvironment
    environment["SLURM_CONF"] = LocalSlurm.conf
    // The job runs as root here, and sbatch passes this environment on to it (mpirun refuses root without it).
    environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    environment["OPENBLAS_NUM_THREADS"] = "1"
    environment.merge(extra) { $1 }
    return try runToEnd(URL(fileURLWithPath: "/usr/bin/env"), arguments, environment: environment, directory: folder, timeout: Double(seconds))
}

@Suite(
    .serialized,
    .enabled(
        if: LocalSlurm.available,
        "the local Slurm needs root, and slurm-wlm and munge installed (Launch/test installs them with apt); this machine lacks one, so no Slurm job ran"))
struct SlurmJobTests {
    var binary: String { binaryUnderTest }

    /// cluster-configs/slurm.toml without its module-load prologue (this machine has no modules),
    /// with the launcher given.
    func exampleConfig(launcher: String, in folder: URL) throws -> String {
        var text = try String(contentsOfFile: clusterConfig("slurm"), encoding: .utf8)
        text = text.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.hasPrefix("prologue") }.joined(separator: "\n")
        text = text.replacingOccurrences(of: "launcher = \"srun\"", with: "launcher = \"\(launcher)\"")
        let file = folder.appendingPathComponent("slurm-\(launcher).toml")
        try Data(text.utf8).write(to: file)
        return file.path
    }

    @Test("batch scripts from Launch/slurm under a local Slurm: srun and mpirun, one and two nodes, and a failing job")
    func jobs() throws {
        try LocalSlurm.exclusive {
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-slurm-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: folder) }
            _ = try slurmRun([launch("slurm-local"), "down"], in: folder)
            let started = Date()
            let up = try slurmRun([launch("slurm-local"), "up", "--nodes", "2"], in: folder, seconds: 600)
            try #require(up.status == 0, "Launch/slurm-local up --nodes 2 failed\n\(up.transcript)")
            print(
                "SlurmJobTests: Launch/slurm-local up --nodes 2 took \(String(format: "%.1f", Date().timeIntervalSince(started))) s"
            )
            let daemons = LocalSlurm.daemonPids()
            defer {
                let down = try? slurmRun([launch("slurm-local"), "down"], in: folder)
                #expect(down?.status == 0, "\(down?.transcript ?? "down did not run")")
                let alive = daemons.filter(LocalSlurm.running)
                #expect(alive.isEmpty, "daemons still running after down: \(alive)")
                #expect(!FileManager.default.fileExists(atPath: LocalSlurm.stateDirectory))
            }
            #expect(daemons.count == 4 || daemons.count == 3, "munged (unless one ran already), slurmctld and two slurmd: \(daemons)")
            // up again changes nothing.
            let again = try slurmRun([launch("slurm-local"), "up", "--nodes", "2"], in: folder)
            #expect(again.status == 0 && again.stderr.contains("already up"), "\(again.transcript)")
            #expect(LocalSlurm.daemonPids().sorted() == daemons.sorted())

            let verify = ["verify", "--tokens", "2048", "--causal"]
            struct Case { let name: String; let launcher: String; let ranks: Int; let perNode: Int; let nodes: Int; let passes: Bool; var extra: [String] = [] }
            let cases = [
                Case(name: "srun, 1 node", launcher: "srun", ranks: 2, perNode: 2, nodes: 1, passes: true),
                Case(name: "srun, 2 nodes", launcher: "srun", ranks: 2, perNode: 1, nodes: 2, passes: true),
                Case(name: "mpirun, 1 node", launcher: "mpirun", ranks: 2, perNode: 2, nodes: 1, passes: true),
                Case(name: "mpirun, 2 nodes", launcher: "mpirun", ranks: 2, perNode: 1, nodes: 2, passes: true),
                // Zero tolerance cannot pass (float32 against float64): verify exits 1, and the job fails.
                Case(
                    name: "srun, 2 nodes, failing", launcher: "srun", ranks: 2, perNode: 1, nodes: 2, passes: false,
                    extra: ["--tolerance", "0", "--reference-tolerance", "0"]),
            ]
            var jobs: [(Case, String)] = []
            for item in cases {
                let config = try exampleConfig(launcher: item.launcher, in: folder)
                let script = folder.appendingPathComponent("\(jobs.count).sbatch")
                let written = try slurmRun(
                    [
                        launch("slurm"), config, "--ranks", String(item.ranks), "--ranks-per-node", String(item.perNode),
                        "--output", script.path,
                    ] + verify + item.extra, in: folder, environment: ["SEQPAR_BIN": binary])
                try #require(written.status == 0, "\(written.transcript)")
                let submitted = try slurmRun(["sbatch", "--parsable", "--output=\(folder.path)/job-%j.out", script.path], in: folder)
                try #require(submitted.status == 0, "\(submitted.transcript)")
                jobs.append((item, submitted.stdout.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""))
            }
            // Launch/slurm --submit: the job is queued and the temporary script is gone.
            let scratch = folder.appendingPathComponent("tmp")
            try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
            let submit = try slurmRun(
                [launch("slurm"), try exampleConfig(launcher: "srun", in: folder), "--ranks", "1", "--ranks-per-node", "1", "--submit"] + verify,
                in: folder, environment: ["SEQPAR_BIN": binary, "TMPDIR": scratch.path])
            #expect(submit.status == 0, "\(submit.transcript)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).isEmpty, "Launch/slurm --submit left its script behind")
            let submitID = submit.stdout.components(separatedBy: "Submitted batch job ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            jobs.append((Case(name: "Launch/slurm --submit, srun, 1 rank", launcher: "srun", ranks: 1, perNode: 1, nodes: 1, passes: true), submitID))

            // Wait for every job, at most 5 minutes in all.
            var records: [String: SlurmJob] = [:]
            let deadline = Date().addingTimeInterval(300)
            while Date() < deadline {
                for (_, id) in jobs {
                    let shown = try slurmRun(["scontrol", "show", "job", "-o", id], in: folder)
                    var job = SlurmJob(id: id)
                    for field in shown.stdout.split(separator: " ") {
                        let parts = field.split(separator: "=", maxSplits: 1).map(String.init)
                        if parts.count == 2 { job.fields[parts[0]] = parts[1] }
                    }
                    records[id] = job
                }
                if jobs.allSatisfy({ SlurmJob.finished.contains(records[$0.1]?.state ?? "") }) { break }
                Thread.sleep(forTimeInterval: 1)
            }
            for (item, id) in jobs {
                let job = records[id] ?? SlurmJob(id: id)
                if !SlurmJob.finished.contains(job.state) {
                    _ = try? slurmRun(["scancel", id], in: folder)
                    Issue.record("job \(id) (\(item.name)) did not finish within 5 minutes: \(job.state)")
                    continue
                }
                let outputFile = item.name.hasPrefix("Launch/slurm --submit") ? "slurm-\(id).out" : "job-\(id).out"
                let output = (try? String(contentsOf: folder.appendingPathComponent(outputFile), encoding: .utf8)) ?? "(no \(outputFile))"
                let verdict = output.split(separator: "\n").last.map(String.init) ?? ""
                print("SlurmJobTests: job \(id) \(item.name): \(job.state) exit \(job.fields["ExitCode"] ?? "?") nodes \(job.fields["NodeList"] ?? "?"); \(verdict)")
                if item.passes {
                    #expect(job.state == "COMPLETED" && job.fields["ExitCode"] == "0:0", "job \(id) \(item.name)\n\(output)")
                    #expect(verdict == "PASS", "job \(id) \(item.name)\n\(output)")
                    #expect(output.contains("\(item.ranks) rank(s), tokens 2048"), "job \(id) \(item.name)\n\(output)")
                } else {
                    #expect(job.state == "FAILED" && job.fields["ExitCode"] == "1:0", "job \(id) \(item.name)\n\(output)")
                    #expect(output.contains("FAIL"), "job \(id) \(item.name)\n\(output)")
                }
                #expect(job.fields["NumNodes"] == String(item.nodes), "job \(id) \(item.name): \(job.fields)")
            }
        }
    }
}
