// Faults a careful user meets: an output path that is an input, a failed or interrupted write over
// an existing output, a full disk, a FIFO, NaN and infinity, float32 overflow, a stopped rank, a
// killed mpirun. Each is judged by its message, its exit status, how long the job took to end,
// and that no existing file changed (bytes and checksum before and after) and nothing was left.

import AttentionCore
import FileFormats
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// FNV-1a of a file's bytes (nil when it does not exist): printed in failure messages.
func checksum(_ path: String) -> UInt64? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in data { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
    return hash
}

/// The checksum of every file of a folder, by name.
func checksums(_ folder: String) -> [String: UInt64] {
    var sums: [String: UInt64] = [:]
    for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
        var info = stat()
        guard stat("\(folder)/\(name)", &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
        sums[name] = checksum("\(folder)/\(name)")
    }
    return sums
}

/// Processes whose command line holds `argument`, with their MPI rank when they have one.
func processes(withArgument argument: String, program: String? = nil) -> [(pid: Int32, rank: Int?)] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry -> (pid: Int32, rank: Int?)? in
        guard let pid = Int32(entry), let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
        let words = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard words.contains(argument), program.map({ p in words.first.map { $0.hasSuffix(p) } ?? false }) ?? true else { return nil }
        let environment =
            FileManager.default.contents(atPath: "/proc/\(entry)/environ").map {
                $0.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            } ?? []
        let rank = environment.first { $0.hasPrefix("OMPI_COMM_WORLD_RANK=") }.flatMap { Int($0.dropFirst("OMPI_COMM_WORLD_RANK=".count)) }
        return (pid, rank)
    }
}

/// Polls `condition` every 0.1 s for up to `seconds`; true once it holds.
func eventually(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return condition()
}

/// Root and a tmpfs can be mounted here (a container may forbid it).
let tmpfsMountable: Bool = {
    guard geteuid() == 0 else { return false }
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("seqpar-mount-probe-\(getpid())").path
    guard (try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)) != nil else { return false }
    defer { try? FileManager.default.removeItem(atPath: folder) }
    guard mount("tmpfs", folder, "tmpfs", 0, "size=64k") == 0 else { return false }
    umount(folder)
    return true
}()

extension EndToEnd {
    @Suite("faults")
    struct Faults {
        static let (tokens, heads, kvHeads, headDim) = (64, 4, 2, 16)

        /// Valid q.npy, k.npy, v.npy and an existing o.npy and lse.npy (random bytes of the right shape).
        static func inputs(_ dir: ScratchDirectory) throws -> [String] {
            try writeRandomNpy(dir.path("q.npy"), shape: [tokens, heads, headDim], seed: 1)
            try writeRandomNpy(dir.path("k.npy"), shape: [tokens, kvHeads, headDim], seed: 2)
            try writeRandomNpy(dir.path("v.npy"), shape: [tokens, kvHeads, headDim], seed: 3)
            try writeRandomNpy(dir.path("o.npy"), shape: [tokens, heads, headDim], seed: 4)
            try writeRandomNpy(dir.path("lse.npy"), shape: [heads, tokens], seed: 5)
            return ["--q", dir.path("q.npy"), "--k", dir.path("k.npy"), "--v", dir.path("v.npy")]
        }

        /// The folder holds exactly the files it held, byte for byte, and no temporary.
        static func unchanged(
            _ dir: ScratchDirectory, _ before: [String: UInt64], _ result: LaunchResult,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            let after = checksums(dir.url.path)
            #expect(after == before, "files changed or were left behind: before \(before), after \(after)\n\(result)", sourceLocation: sourceLocation)
            let hidden = ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).filter { $0.contains(".seqpar-") }
            #expect(hidden.isEmpty, "temporary files left: \(hidden)\n\(result)", sourceLocation: sourceLocation)
        }

        // MARK: outputs

        @Test(
            "an output that is an input or another output is refused before any compute",
            arguments: ["out=q", "lse=link to v", "out=hard link to k", "out=lse spelled differently", "lse=dangling link to out"])
        func outputIsInput(_ kind: String) async throws {
            let dir = try ScratchDirectory()
            let inputs = try Self.inputs(dir)
            var outputs: [String]
            var phrase = "is the same file as the input"
            switch kind {
            case "out=q": outputs = ["--out", dir.path("q.npy")]
            case "lse=link to v":
                try FileManager.default.createSymbolicLink(atPath: dir.path("link.npy"), withDestinationPath: "v.npy")
                outputs = ["--out", dir.path("new-o.npy"), "--lse", dir.path("link.npy")]
            case "out=hard link to k":
                try FileManager.default.linkItem(atPath: dir.path("k.npy"), toPath: dir.path("hard.npy"))
                outputs = ["--out", dir.path("hard.npy")]
            case "out=lse spelled differently":
                outputs = ["--out", dir.path("new.npy"), "--lse", dir.url.path + "/./sub/../new.npy"]
                try FileManager.default.createDirectory(atPath: dir.path("sub"), withIntermediateDirectories: true)
                phrase = "is the same file as the output --out"
            default:
                try FileManager.default.createSymbolicLink(atPath: dir.path("dangling.npy"), withDestinationPath: "future.npy")
                outputs = ["--out", dir.path("future.npy"), "--lse", dir.path("dangling.npy")]
                phrase = "is the same file as the output --out"
            }
            let before = checksums(dir.url.path)
            let result = try await launch(ranks: 2, arguments: ["run"] + inputs + outputs, timeout: 60)
            #expect(result.status == 1, "\(result)")
            #expect(occurrences(of: phrase, in: result.seqparStderr) == 1, "\(result)")
            #expect(!result.stdout.contains("GFLOP/s"), "it computed before refusing\n\(result)")
            Self.unchanged(dir, before, result)
        }

        @Test("a bad --lse path fails in seconds and leaves the existing O byte for byte")
        func badLsePathKeepsOutput() async throws {
            let dir = try ScratchDirectory()
            let inputs = try Self.inputs(dir)
            let before = checksums(dir.url.path)
            let result = try await launch(ranks: 2, arguments: ["run"] + inputs + ["--out", dir.path("o.npy"), "--lse", dir.path("missing/lse.npy")], timeout: 60)
            #expect(result.status == 64, "refused with the arguments, before MPI starts\n\(result)")
            #expect(result.seqparStderr.contains("--lse \(dir.path("missing/lse.npy")): the folder") && result.seqparStderr.contains("does not exist"), "\(result)")
            Self.unchanged(dir, before, result)
        }

        @Test("FIFOs as input or output are refused without blocking", arguments: ["--q", "--out"])
        func fifo(_ option: String) async throws {
            let dir = try ScratchDirectory()
            var arguments = try Self.inputs(dir)
            try #require(mkfifo(dir.path("fifo"), 0o644) == 0)
            if option == "--q" { arguments[1] = dir.path("fifo") } else { arguments += ["--out", dir.path("fifo")] }
            let before = checksums(dir.url.path)
            let result = try await launch(ranks: 2, arguments: ["run"] + arguments, timeout: 60)
            #expect(result.status == 1, "\(result)")
            #expect(result.seqparStderr.contains("is a FIFO (named pipe), not a regular file"), "\(result)")
            Self.unchanged(dir, before, result)
        }

        @Test("a full disk fails before the compute and leaves the existing O", .enabled(if: tmpfsMountable, "needs root and permission to mount a tmpfs"))
        func fullDisk() async throws {
            let dir = try ScratchDirectory()
            let mountPoint = dir.path("small")
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=1m") == 0, "mount: \(String(cString: strerror(errno)))")
            defer { umount2(mountPoint, Int32(MNT_DETACH)) }
            // An old O of 0.5 MiB; the new one (4096 x 8 x 64 floats, 8 MiB) cannot fit.
            try writeRandomNpy("\(mountPoint)/o.npy", shape: [1024, 2, 64], seed: 7)
            let before = checksums(mountPoint)
            let result = try await launch(ranks: 2, arguments: ["run", "--tokens", "4096", "--out", "\(mountPoint)/o.npy"], timeout: 60)
            #expect(result.status == 1, "\(result)")
            #expect(result.seqparStderr.contains("cannot reserve") && result.seqparStderr.contains("No space left on device"), "\(result)")
            #expect(!result.stdout.contains("GFLOP/s"), "it computed before failing\n\(result)")
            let after = checksums(mountPoint)
            #expect(after == before, "before \(before), after \(after)\n\(result)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: mountPoint) == ["o.npy"], "\(result)")
        }

        @Test("ranks killed mid-run leave the existing O byte for byte and no temporary")
        func killedMidRun() async throws {
            let dir = try ScratchDirectory()
            try writeRandomNpy(dir.path("o.npy"), shape: [16, 2, 8], seed: 9)
            let before = checksums(dir.url.path)
            let marker = "271828"  // a seed no other test uses: finds this job's ranks
            let arguments = ["run", "--tokens", "24576", "--causal", "--seed", marker, "--out", dir.path("o.npy")]
            let job = Task { try await launch(ranks: 2, arguments: arguments, timeout: 120) }
            let temporaryAppeared = await eventually(30) {
                ((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).contains { $0.hasPrefix(".o.npy.seqpar-") }
            }
            #expect(temporaryAppeared, "the run never created its temporary output")
            let ranks = processes(withArgument: marker, program: "seqpar")
            for rank in ranks { kill(rank.pid, SIGKILL) }
            let result = try await job.value
            #expect(ranks.count == 2, "found ranks \(ranks)")
            #expect(result.status != 0, "\(result)")
            Self.unchanged(dir, before, result)
        }

        // MARK: numbers

        @Test("NaN or infinity in Q, K or V is refused, naming the file, tensor and position", arguments: ["Q", "K", "V"])
        func nonFiniteInput(_ tensor: String) async throws {
            let dir = try ScratchDirectory()
            let inputs = try Self.inputs(dir)
            let file = dir.path("\(tensor.lowercased()).npy")
            var (shape, values) = try NpyFile.load(file)
            // Token 50 (rank 1's rows at 2 ranks), head 1, dim 3.
            let width = shape[1] * shape[2]
            values[50 * width + 1 * shape[2] + 3] = tensor == "K" ? .infinity : .nan
            try NpyFile.save(file, shape: shape, values: values)
            let before = checksums(dir.url.path)
            let result = try await launch(ranks: 2, arguments: ["run", "--causal"] + inputs + ["--out", dir.path("o.npy")], timeout: 60)
            #expect(result.status == 1, "\(result)")
            let what = tensor == "K" ? "+inf" : "NaN"
            #expect(occurrences(of: "\(tensor) \(file) holds \(what) at [token 50, head 1, dim 3]", in: result.seqparStderr) == 1, "\(result)")
            Self.unchanged(dir, before, result)
        }

        @Test(
            "overflowing scores stop the run instead of reporting rows that see no key",
            arguments: [["--scale", "1e38"], ["HUGE-Q"]])
        func overflow(_ arguments: [String]) async throws {
            let dir = try ScratchDirectory()
            var inputs = try Self.inputs(dir)
            if arguments == ["HUGE-Q"] {
                let values = try writeRandomNpy(dir.path("huge.npy"), shape: [Self.tokens, Self.heads, Self.headDim], seed: 11)
                try NpyFile.save(dir.path("huge.npy"), shape: [Self.tokens, Self.heads, Self.headDim], values: values.map { $0 * 3e38 })
                inputs[1] = dir.path("huge.npy")
            }
            let before = checksums(dir.url.path)
            let extra = arguments == ["HUGE-Q"] ? [] : arguments
            let result = try await launch(ranks: 2, arguments: ["run"] + inputs + extra + ["--out", dir.path("o.npy"), "--lse", dir.path("lse.npy")], timeout: 60)
            #expect(result.status == 1, "\(result)")
            #expect(result.seqparStderr.contains("are not finite in float32"), "\(result)")
            Self.unchanged(dir, before, result)
        }

        @Test("verify fails when the output would be NaN")
        func verifyOfNaNFails() async throws {
            let result = try await launch(ranks: 2, arguments: ["verify", "--tokens", "300", "--scale", "1e38"], timeout: 60)
            #expect(result.status != 0, "\(result)")
            #expect(result.seqparStderr.contains("are not finite in float32"), "\(result)")
            #expect(!result.stdout.contains("PASS"), "\(result)")
        }

        @Test("an impossible size is refused with the memory per rank and a rank count that fits")
        func impossibleSize() async throws {
            let result = try await launch(ranks: 1, arguments: ["run", "--tokens", "3000000", "--heads", "64", "--head-dim", "128"], timeout: 60)
            #expect(result.status == 1, "\(result)")
            #expect(
                result.seqparStderr.contains("this run needs about") && result.seqparStderr.contains("per rank at 1 rank(s)")
                    && result.seqparStderr.contains("ranks with"), "\(result)")
        }

        // MARK: hangs and leftovers

        /// One rank of three stopped mid-run: the others say they wait for it, and the whole job
        /// (the stopped rank too) is gone soon after --timeout.
        @Test("a stopped rank ends the job after --timeout, named")
        func stoppedRank() async throws {
            let marker = "314159"
            let dir = try ScratchDirectory()
            let arguments = ["run", "--tokens", "40000", "--causal", "--strategy", "ring", "--seed", marker, "--timeout", "20", "--out", dir.path("o.npy")]
            let job = Task { try await launch(ranks: 3, arguments: arguments, timeout: 90) }
            let started = await eventually(20) { processes(withArgument: marker, program: "seqpar").count == 3 }
            try await Task.sleep(for: .seconds(2))
            let stopped = processes(withArgument: marker, program: "seqpar").first { $0.rank == 1 }
            #expect(started && stopped != nil, "rank 1 not found")
            if let stopped { kill(stopped.pid, SIGSTOP) }
            let result = try await job.value
            #expect(result.status == 124, "\(result)")
            #expect(result.seqparStderr.contains("rank 1 did not answer by the deadline"), "\(result)")
            #expect(result.seqparStderr.contains("(--timeout 20)"), "\(result)")
            #expect(processes(withArgument: marker).isEmpty, "processes left: \(processes(withArgument: marker))")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).isEmpty, "output or temporary left")
        }

        /// mpirun SIGKILLed: Launch/local removes its session directory and shared memory, and
        /// the ranks end by themselves.
        @Test("a killed mpirun leaves no ranks, session directory or shared memory")
        func killedLauncher() async throws {
            let marker = "161803"
            let dir = try ScratchDirectory()
            let arguments = ["run", "--tokens", "24576", "--causal", "--seed", marker, "--out", dir.path("o.npy")]
            let job = Task { try await launch(ranks: 2, arguments: arguments, timeout: 90) }
            let started = await eventually(20) { processes(withArgument: marker, program: "seqpar").count == 2 }
            #expect(started)
            try await Task.sleep(for: .seconds(1.5))
            let mpirun = try #require(processes(withArgument: marker, program: "mpirun").first, "mpirun not found")
            let sessions = ((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix("ompi.") }
                .map { "/tmp/\($0)/pid.\(mpirun.pid)" }.filter { FileManager.default.fileExists(atPath: $0) }
            let contact = sessions.first.flatMap { try? String(contentsOfFile: "\($0)/contact.txt", encoding: .utf8) }
            let family = contact.flatMap { UInt64($0.prefix { $0.isNumber }) }.map { String($0 >> 16, radix: 16) }
            func segments() -> [String] {
                guard let family else { return [] }
                return ((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? [])
                    .filter { $0.hasPrefix("vader_segment.") && $0.split(separator: ".").dropLast().last?.hasPrefix(family) == true }
            }
            #expect(!sessions.isEmpty && family != nil, "no session directory found for mpirun \(mpirun.pid)")
            #expect(!segments().isEmpty, "no shared-memory segments found for the job")
            kill(mpirun.pid, SIGKILL)
            let result = try await job.value
            #expect(result.status != 0, "\(result)")
            #expect(await eventually(5) { processes(withArgument: marker).isEmpty }, "ranks left: \(processes(withArgument: marker))")
            #expect(sessions.allSatisfy { !FileManager.default.fileExists(atPath: $0) }, "session directory left: \(sessions)")
            #expect(segments().isEmpty, "segments left: \(segments())")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir.url.path)) ?? []).isEmpty, "output or temporary left")
        }
    }
}
