// The commit of a job's outputs under faults: two jobs writing the same files, a target that
// becomes a folder during the compute, a signal at any moment, --save-inputs on a full disk, a
// target name near the 255-byte limit. Each judged as FaultTests are: status, message, and every
// existing file byte for byte (all of the new set, or all of the old, never a mix).

import Foundation
import SeqparTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

extension EndToEnd.Faults {
    /// The checksums of `names` in `dir`.
    static func sums(_ dir: ScratchDirectory, _ names: [String]) -> [UInt64?] { names.map { checksum(dir.path($0)) } }

    static let commitNames = ["o.npy", "l.npy", "dq.npy"]

    /// A run writing O, LSE and dQ of `seed` into `dir`.
    static func backwardRun(_ dir: ScratchDirectory, seed: Int, tokens: Int = 1024) -> [String] {
        [
            "run", "--tokens", String(tokens), "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--causal", "--seed", String(seed),
            "--backward", "--out", dir.path("o.npy"), "--lse", dir.path("l.npy"), "--dq", dir.path("dq.npy"),
        ]
    }

    @Test("a job waits for another's commit lock on the folder: its outputs change only once the lock is free, and all at once")
    func commitWaitsForTheLock() async throws {
        let dir = try ScratchDirectory()
        let first = try await launch(ranks: 1, arguments: Self.backwardRun(dir, seed: 1), timeout: 60)
        try #require(first.status == 0, "\(first)")
        let old = Self.sums(dir, Self.commitNames)
        // Hold the folder's commit lock as another job would.
        let folder = open(dir.url.path, O_RDONLY | O_DIRECTORY)
        try #require(folder >= 0 && flock(folder, LOCK_EX) == 0)
        let job = Task { try await launch(ranks: 1, arguments: Self.backwardRun(dir, seed: 2), timeout: 60) }
        let reachedCommit = await eventually(30) {
            ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).contains { $0.hasPrefix(".dq.npy.seqpar-") }
        }
        #expect(reachedCommit, "the job never made its temporaries")
        try await Task.sleep(for: .seconds(3))  // the job itself takes well under a second here
        #expect(Self.sums(dir, Self.commitNames) == old, "the outputs changed while another job held the folder's commit lock")
        close(folder)
        let second = try await job.value
        #expect(second.status == 0, "\(second)")
        let new = Self.sums(dir, Self.commitNames)
        #expect(zip(new, old).allSatisfy { $0 != $1 }, "not every output was replaced: old \(old), new \(new)\n\(second)")
    }

    @Test("two jobs writing the same O, LSE and dQ at once leave one job's set, never a mix")
    func concurrentJobsNeverMix() async throws {
        let dir = try ScratchDirectory()
        var sets: [[UInt64?]] = []
        for seed in [1, 2] {
            let alone = try await launch(ranks: 1, arguments: Self.backwardRun(dir, seed: seed, tokens: 512), timeout: 60)
            try #require(alone.status == 0, "\(alone)")
            sets.append(Self.sums(dir, Self.commitNames))
        }
        for pair in 0 ..< 4 {
            async let a = launch(ranks: 1, arguments: Self.backwardRun(dir, seed: 1, tokens: 512), timeout: 60)
            async let b = launch(ranks: 1, arguments: Self.backwardRun(dir, seed: 2, tokens: 512), timeout: 60)
            let (ra, rb) = try await (a, b)
            #expect(ra.status == 0 && rb.status == 0, "pair \(pair)\n\(ra)\n\(rb)")
            let now = Self.sums(dir, Self.commitNames)
            #expect(sets.contains(now), "pair \(pair) left a mix: \(now), against seed 1's \(sets[0]) and seed 2's \(sets[1])")
        }
    }

    @Test("a target that becomes a folder during the compute fails the commit before any file is replaced")
    func targetBecomesFolder() async throws {
        let dir = try ScratchDirectory()
        let names = ["o.npy", "l.npy", "dq.npy", "dk.npy", "dv.npy"]
        for name in names { try writeRandomNpy(dir.path(name), shape: [8, 2, 4], seed: UInt64(name.utf8.count)) }
        let before = checksums(dir.url.path)
        let arguments =
            Self.backwardRun(dir, seed: 3, tokens: 8192) + ["--dk", dir.path("dk.npy"), "--dv", dir.path("dv.npy")]
        let job = Task { try await launch(ranks: 1, arguments: arguments, timeout: 120) }
        let begun = await eventually(30) {
            ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).contains { $0.hasPrefix(".dv.npy.seqpar-") }
        }
        #expect(begun, "the job never made its temporaries")
        try FileManager.default.removeItem(atPath: dir.path("dv.npy"))
        try FileManager.default.createDirectory(atPath: dir.path("dv.npy"), withIntermediateDirectories: false)
        let result = try await job.value
        #expect(result.status == 1, "\(result)")
        #expect(result.seqparStderr.contains("--dv \(dir.path("dv.npy")) is now a directory"), "\(result)")
        var expected = before
        expected["dv.npy"] = nil
        Self.unchanged(dir, expected, result)
    }

    @Test("SIGTERM to Launch/local at any moment: exit 0 with every new output, or non-zero with every old one and a message")
    func signalAtAnyMoment() async throws {
        let dir = try ScratchDirectory()
        let outputs = ["--out", dir.path("o.npy"), "--lse", dir.path("l.npy")]
        let arguments = ["run", "--tokens", "8192"] + outputs
        let old = try await launch(ranks: 2, arguments: arguments + ["--seed", "1"], timeout: 60)
        try #require(old.status == 0, "\(old)")
        let oldSums = Self.sums(dir, ["o.npy", "l.npy"])
        // nil: the moment the ranks have made their temporaries, so certainly before the commit
        // (the job is made 4x longer for it, seconds of compute); then fixed delays, any moment.
        for delay in [nil, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0] as [Double?] {
            let job = Task {
                try await runProcess(
                    packageRoot.appendingPathComponent("Launch/local"), ["2", "run", "--tokens", delay == nil ? "16384" : "8192", "--seed", "2"] + outputs,
                    environment: ProcessInfo.processInfo.environment.merging(["SEQPAR_BIN": try seqparBinary()]) { $1 }, timeout: 60)
            }
            if let delay {
                try await Task.sleep(for: .seconds(delay))
            } else {
                let begun = await eventually(30) {
                    ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).contains { $0.hasPrefix(".o.npy.seqpar-") }
                }
                #expect(begun, "the job never made its temporaries")
            }
            let moment = delay.map { "after \($0) s" } ?? "once the temporaries were made"
            for launcher in processes(withArgument: dir.path("o.npy")) where launcher.rank == nil {
                if let line = try? String(contentsOfFile: "/proc/\(launcher.pid)/cmdline", encoding: .utf8), line.contains("Launch/local") {
                    kill(launcher.pid, SIGTERM)
                }
            }
            let result = try await job.value
            let sums = Self.sums(dir, ["o.npy", "l.npy"])
            if delay == nil {
                #expect(result.status != 0, "SIGTERM during the compute, yet exit 0\n\(result)")
            }
            if result.status == 0 {
                #expect(zip(sums, oldSums).allSatisfy { $0 != $1 }, "exit 0 \(moment) but not every output is new\n\(result)")
            } else {
                #expect(sums == oldSums, "exit \(result.status) \(moment) but the outputs changed\n\(result)")
                #expect(result.stderr.contains("stopped by SIGTERM"), "no word of the signal \(moment)\n\(result)")
            }
            #expect(!result.timedOut, "\(result)")
            let hidden = ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).filter { $0.hasPrefix(".") }
            #expect(hidden.isEmpty, "left behind \(moment): \(hidden)")
            let reset = try await launch(ranks: 2, arguments: arguments + ["--seed", "1"], timeout: 60)
            try #require(reset.status == 0 && Self.sums(dir, ["o.npy", "l.npy"]) == oldSums, "\(reset)")
        }
    }

    @Test(
        "--save-inputs on a full disk fails before any file is touched and leaves the existing Q, K and V",
        .enabled(if: tmpfsMountable, "needs root and permission to mount a tmpfs"))
    func saveInputsFullDisk() async throws {
        let dir = try ScratchDirectory()
        let mountPoint = dir.path("small")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=2m") == 0, "mount: \(String(cString: strerror(errno)))")
        defer { umount2(mountPoint, Int32(MNT_DETACH)) }
        let small = try await launch(ranks: 2, arguments: ["run", "--tokens", "256", "--save-inputs", mountPoint], timeout: 60)
        try #require(small.status == 0, "\(small)")
        let before = checksums(mountPoint)
        // 4096 tokens: Q alone is 8 MiB.
        let result = try await launch(ranks: 2, arguments: ["run", "--tokens", "4096", "--seed", "9", "--save-inputs", mountPoint], timeout: 60)
        #expect(result.status == 1, "\(result)")
        #expect(result.seqparStderr.contains("No space left on device"), "\(result)")
        #expect(!result.stdout.contains("GFLOP/s"), "it computed after failing to save\n\(result)")
        #expect(checksums(mountPoint) == before, "before \(before), after \(checksums(mountPoint))\n\(result)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mountPoint).sorted() == ["K.npy", "Q.npy", "V.npy"], "\(result)")
    }

    @Test("an output name of 250 bytes is written (its temporary's name is cut to fit 255)")
    func longOutputName() async throws {
        let dir = try ScratchDirectory()
        let name = String(repeating: "o", count: 246) + ".npy"
        let result = try await launch(ranks: 2, arguments: ["run", "--tokens", "256", "--out", dir.path(name)], timeout: 60)
        #expect(result.status == 0, "\(result)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.url.path) == [name], "\(result)")
    }

    @Test("an output path that starts with a dash is taken as a path: --out -o.npy writes -o.npy")
    func dashedOutputName() async throws {
        let dir = try ScratchDirectory()
        let result = try await runProcess(
            packageRoot.appendingPathComponent("Launch/local"), ["1", "run", "--tokens", "64", "--out", "-o.npy"],
            environment: ProcessInfo.processInfo.environment.merging(["SEQPAR_BIN": try seqparBinary()]) { $1 }, directory: dir.url, timeout: 60)
        #expect(result.status == 0, "\(result)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.url.path) == ["-o.npy"], "\(result)")
    }

    @Test("a missing or malformed --probe file is refused naming the file and what is wrong", arguments: ["missing", "not JSON", "no figures"])
    func badProbeFile(_ kind: String) async throws {
        let dir = try ScratchDirectory()
        let path = dir.path("probe.json")
        let phrase: String
        switch kind {
        case "missing": phrase = "--probe \(path): there is no such file; expected the JSON that seqpar probe --out FILE writes"
        case "not JSON":
            try Data("{\"ranks\": 1, \"x\": [1,".utf8).write(to: URL(fileURLWithPath: path))
            phrase = "--probe \(path) is not a probe's figures (not valid JSON)"
        default:
            try Data("{\"ranks\": 1}".utf8).write(to: URL(fileURLWithPath: path))
            phrase = "--probe \(path) is not a probe's figures (no \""
        }
        let result = try await launch(ranks: 1, arguments: ["run", "--tokens", "64", "--strategy", "auto", "--probe", path], timeout: 60)
        #expect(result.status == 1, "\(result)")
        #expect(occurrences(of: phrase, in: result.seqparStderr) == 1, "\(result)")
        #expect(!result.stderr.contains("NSCocoaErrorDomain") && !result.stderr.contains("DecodingError"), "\(result)")
    }

    @Test("probe --out /dev/full is refused before measuring, as every device is")
    func probeToDevice() async throws {
        let result = try await launch(ranks: 1, arguments: ["probe", "--out", "/dev/full"], timeout: 60)
        #expect(result.status == 1, "\(result)")
        #expect(result.seqparStderr.contains("--out /dev/full is a character device, not a regular file"), "\(result)")
        #expect(!result.stderr.contains("NSCocoaErrorDomain"), "\(result)")
    }

    @Test(
        "--profile and probe --out on a full disk fail with the file named and leave no file behind",
        .enabled(if: tmpfsMountable, "needs root and permission to mount a tmpfs"))
    func wholeFilesOnFullDisk() async throws {
        let dir = try ScratchDirectory()
        let mountPoint = dir.path("full")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=64k") == 0, "mount: \(String(cString: strerror(errno)))")
        defer { umount2(mountPoint, Int32(MNT_DETACH)) }
        // Fill it: a write of any size now fails with ENOSPC.
        let filler = fopen("\(mountPoint)/filler", "w")
        try #require(filler != nil)
        let block = [UInt8](repeating: 1, count: 4096)
        while fwrite(block, 1, block.count, filler) == block.count {}
        fclose(filler)
        let before = checksums(mountPoint)
        let profile = try await launch(ranks: 2, arguments: ["run", "--tokens", "512", "--profile", "\(mountPoint)/t.json"], timeout: 60)
        #expect(profile.status == 1, "\(profile)")
        #expect(profile.seqparStderr.contains("cannot write the trace to \(mountPoint)/t.json (No space left on device)"), "\(profile)")
        let probe = try await launch(ranks: 1, arguments: ["probe", "--out", "\(mountPoint)/p.json"], timeout: 120)
        #expect(probe.status == 1, "\(probe)")
        #expect(probe.seqparStderr.contains("cannot write the probe's figures to \(mountPoint)/p.json (No space left on device)"), "\(probe)")
        #expect(!probe.stderr.contains("NSCocoaErrorDomain"), "\(probe)")
        #expect(checksums(mountPoint) == before, "\(profile)\n\(probe)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mountPoint) == ["filler"], "files left behind")
    }
}
