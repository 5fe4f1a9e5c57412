// Output files that appear whole or not at all.
//
// Before anything is computed, every output path is checked on every rank: it must not be the
// same file as an input or as another output (device and inode, links resolved; for a file not
// yet there, its resolved folder and name), must not be a FIFO, device or folder, and its folder
// must be writable. Once the inputs are loaded, rank 0 creates a temporary file beside each
// target (".NAME.seqpar-XXXXXX") and reserves its whole size, so a full disk fails then, not
// after the computation. The ranks write their rows into the temporaries; only when every rank
// has written its rows are they renamed over the targets. On any failure the temporaries are
// removed and the targets are left as they were. What a job killed outright leaves is removed
// by its launcher: rank 0 lists its temporaries in $SEQPAR_JOB_DIR/outputs (Launch/local and
// Launch/cluster set it), and a rank ended by a signal or the watchdog removes them itself.

import AttentionCore
import FileFormats
import Foundation
import MPIBinding
import SequenceParallel

/// An output path refused before anything is computed: the same file as an input or another output, not a
/// regular file, or in a folder that is missing or cannot be written.
public struct OutputPathError: Error, CustomStringConvertible {
    public let description: String
}

/// Where a path leads, for telling whether two paths name one file.
enum FileIdentity: Equatable {
    case node(device: UInt64, inode: UInt64)
    /// A file not there yet: its resolved folder and name.
    case future(String)
}

/// The checks of output paths made on every rank before a run: links resolved, and each output's identity
/// compared with the inputs' and the other outputs'.
public enum OutputPaths {
    /// The file a write to `path` replaces: `path` with every link resolved, also for a file
    /// that does not exist yet (its folder resolved, or a dangling link followed).
    static func resolvedTarget(_ path: String) throws -> String {
        var current = path
        for _ in 0 ..< 40 {
            if let real = realpath(current, nil) {
                defer { free(real) }
                return String(cString: real)
            }
            var info = stat()
            if lstat(current, &info) == 0, info.st_mode & S_IFMT == S_IFLNK {
                // A dangling link: writing through it creates its target.
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlink(current, &buffer, buffer.count - 1)
                guard n > 0 else { break }
                let target = String(decoding: buffer[0 ..< n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                current = target.hasPrefix("/") ? target : (parent(of: current) as NSString).appendingPathComponent(target)
                continue
            }
            let folder = parent(of: current), name = (current as NSString).lastPathComponent
            guard let real = realpath(folder, nil) else {
                throw OutputPathError(description: "\(path): the folder \(folder) does not exist (\(String(cString: strerror(errno))))")
            }
            defer { free(real) }
            return (String(cString: real) as NSString).appendingPathComponent(name)
        }
        throw OutputPathError(description: "\(path): too many levels of symbolic links")
    }

    static func parent(of path: String) -> String {
        let folder = (path as NSString).deletingLastPathComponent
        return folder.isEmpty ? "." : folder
    }

    static func identity(_ path: String) throws -> FileIdentity {
        var info = stat()
        if stat(path, &info) == 0 { return .node(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)) }
        return .future(try resolvedTarget(path))
    }

    /// Refuses outputs that would destroy an input or each other, that are not regular files,
    /// or whose folder cannot be written. `outputs` and `inputs` are (option, path) pairs.
    /// Opens nothing (a FIFO's open would block).
    public static func check(outputs: [(option: String, path: String)], inputs: [(option: String, path: String)]) throws {
        var seen: [(option: String, path: String, identity: FileIdentity)] = []
        for input in inputs {
            var info = stat()
            guard stat(input.path, &info) == 0 else { continue }  // a missing input is reported when it is read
            seen.append((input.option, input.path, .node(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))))
        }
        for output in outputs {
            guard !output.path.isEmpty else { throw OutputPathError(description: "\(output.option) is empty; expected a file name") }
            if let kind = NpyFile.irregularKind(output.path) {
                throw OutputPathError(description: "\(output.option) \(output.path) is \(kind), not a regular file; expected a file name to write")
            }
            let identity: FileIdentity
            do { identity = try Self.identity(output.path) } catch { throw OutputPathError(description: "\(output.option) \(error)") }
            if let other = seen.first(where: { $0.identity == identity }) {
                let what = inputs.contains { $0.option == other.option } ? "the input" : "the output"
                throw OutputPathError(
                    description: "\(output.option) \(output.path) is the same file as \(what) \(other.option) \(other.path); "
                        + "writing it would destroy that \(what == "the input" ? "input" : "output"). Give another path")
            }
            seen.append((output.option, output.path, identity))
            let folder = parent(of: try resolvedTarget(output.path))
            guard access(folder, W_OK) == 0 else {
                throw OutputPathError(description: "\(output.option) \(output.path): cannot write in the folder \(folder) (\(String(cString: strerror(errno))))")
            }
        }
    }
}

/// The output files of one command: temporaries until `commit` renames them into place.
public final class OutputTransaction {
    /// One output file: the option and path the user gave, the file the rename replaces, and the temporary
    /// the ranks write their rows into.
    public struct Target {
        public let option: String
        /// As the user gave it (for messages).
        public let path: String
        /// What the rename replaces (links resolved).
        let final: String
        /// Where the rows are written.
        public let temporary: String
        let shape: [Int]
        let elementType: ElementType
    }

    public let targets: [Target]
    private let communicator: Communicator
    private var open = true

    private init(targets: [Target], communicator: Communicator) {
        self.targets = targets
        self.communicator = communicator
    }

    /// The temporary file to write for `option`'s output.
    public func temporary(_ option: String) -> String? { targets.first { $0.option == option }?.temporary }

    /// One file to write: the option and path the user gave, its shape and element type.
    public typealias Output = (option: String, path: String, shape: [Int], elementType: ElementType)

    /// Collective: rank 0 creates a temporary beside each target with room for `shape` of its
    /// element type, and every rank learns their names. Throws on every rank if rank 0 cannot.
    public static func begin(_ outputs: [Output], communicator: Communicator) throws -> OutputTransaction {
        var made: [Target] = []
        do {
            try communicator.together {
                guard communicator.rank == 0 else { return }
                for output in outputs {
                    made.append(try create(output))
                    OutputCleanup.register(made.last!.temporary)
                }
                try listForLauncher(made.map(\.temporary))
            }
        } catch {
            made.forEach { unlink($0.temporary) }
            OutputCleanup.forget()
            throw error
        }
        let names = try communicator.allgather(made.map(\.temporary).joined(separator: "\u{0}"))[0]
        let temporaries = names.isEmpty ? [] : names.split(separator: "\u{0}", omittingEmptySubsequences: false).map(String.init)
        var targets: [Target] = []
        for (i, output) in outputs.enumerated() {
            let final = try resolvedFinal(output.path)
            targets.append(Target(option: output.option, path: output.path, final: final, temporary: temporaries[i], shape: output.shape, elementType: output.elementType))
        }
        return OutputTransaction(targets: targets, communicator: communicator)
    }

    private static func resolvedFinal(_ path: String) throws -> String { try OutputPaths.resolvedTarget(path) }

    private static func create(_ output: Output) throws -> Target {
        let final = try OutputPaths.resolvedTarget(output.path)
        let folder = OutputPaths.parent(of: final), name = (final as NSString).lastPathComponent
        var template = Array(((folder as NSString).appendingPathComponent(".\(temporaryStem(name)).seqpar-XXXXXX")).utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw OutputPathError(description: "\(output.option) \(output.path): cannot create a file in \(folder) (\(String(cString: strerror(errno))))")
        }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { close(fd) }
        do {
            // mkstemp makes it 0600; an output is as readable as any file this user creates.
            let mask = umask(0)
            umask(mask)
            fchmod(fd, 0o666 & ~mask)
            let header = try NpyFile.create(temporary, shape: output.shape, elementType: output.elementType)
            let bytes = header.dataOffset + header.elementCount * output.elementType.byteSize
            let reserved = posix_fallocate(fd, 0, off_t(bytes))
            if reserved != 0 && reserved != EOPNOTSUPP && reserved != EINVAL {
                throw OutputPathError(description: "\(output.option) \(output.path): cannot reserve \(bytes) bytes in \(folder) (\(String(cString: strerror(reserved))))")
            }
        } catch {
            unlink(temporary)
            throw error
        }
        return Target(option: output.option, path: output.path, final: final, temporary: temporary, shape: output.shape, elementType: output.elementType)
    }

    /// The target's name as its temporary carries it: cut short (at a character) so that
    /// ".NAME.seqpar-XXXXXX" fits a file name's 255 bytes whatever the target's length.
    static func temporaryStem(_ name: String) -> String {
        var stem = "", bytes = 0
        for scalar in name.unicodeScalars {
            bytes += String(scalar).utf8.count
            guard bytes <= 255 - ".".utf8.count - ".seqpar-XXXXXX".utf8.count else { break }
            stem.unicodeScalars.append(scalar)
        }
        return stem
    }

    /// Tells the launcher which files to remove should the job be killed before it ends.
    private static func listForLauncher(_ temporaries: [String]) throws {
        guard let folder = ProcessInfo.processInfo.environment["SEQPAR_JOB_DIR"], !folder.isEmpty else { return }
        let list = (folder as NSString).appendingPathComponent("outputs")
        let fd = Glibc.open(list, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        guard fd >= 0 else { return }  // best effort: the launcher's list is a second line of defence
        defer { close(fd) }
        var bytes = Array(temporaries.map { $0 + "\u{0}" }.joined().utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    /// Collective, after every rank has written its rows without error: renames the
    /// temporaries over the targets, all or none. Rank 0 first takes the commit lock of each
    /// target's folder (so two jobs writing the same files never leave a mix of both), checks
    /// every target (none may have become a folder or another kind of file since the start),
    /// keeps a link to each file it replaces, then renames; should a rename fail, or a signal
    /// arrive meanwhile, what was replaced is put back and the commit fails on every rank.
    public func commit() throws {
        OutputCleanup.deferSignals()
        try communicator.together {
            guard communicator.rank == 0 else { return }
            let locks = try CommitLock(folders: targets.map { OutputPaths.parent(of: $0.final) })
            defer { locks.release() }
            for target in targets {
                if let kind = NpyFile.irregularKind(target.final) {
                    throw OutputPathError(
                        description: "\(target.option) \(target.path) is now \(kind), not a regular file; no output was written or changed")
                }
            }
            var replaced: [(target: Target, kept: String?)] = []
            func putBack() {
                for (target, kept) in replaced.reversed() {
                    if let kept { rename(kept, target.final) } else { unlink(target.final) }
                }
            }
            for target in targets {
                let kept: String?
                do { kept = try Self.keep(target) } catch {
                    putBack()
                    throw error
                }
                guard rename(target.temporary, target.final) == 0 else {
                    let reason = String(cString: strerror(errno))
                    if let kept { unlink(kept) }
                    putBack()
                    throw OutputPathError(
                        description: "\(target.option) \(target.path): cannot move the finished file into place (\(reason)); "
                            + "every output was left as it was")
                }
                replaced.append((target, kept))
            }
            if let sig = OutputCleanup.deferredSignal {
                putBack()
                throw OutputPathError(description: "stopped by \(OutputCleanup.name(sig)) while committing the outputs; every output was left as it was")
            }
            for case let (_, kept?) in replaced { unlink(kept) }
        }
        open = false
        if communicator.rank == 0 { OutputCleanup.forget() }
    }

    /// A second name for the file `target`'s rename will replace, beside it, so the commit can
    /// put it back; nil when there is none. A hard link where the file system has them, else the
    /// file itself is moved aside.
    private static func keep(_ target: Target) throws -> String? {
        var info = stat()
        guard lstat(target.final, &info) == 0 else { return nil }
        let folder = OutputPaths.parent(of: target.final)
        for attempt in 0 ..< 100 {
            let kept = (folder as NSString).appendingPathComponent(".seqpar-kept-\(getpid())-\(attempt)")
            if link(target.final, kept) == 0 || (errno != EEXIST && rename(target.final, kept) == 0) {
                return kept
            }
            guard errno == EEXIST else { break }
        }
        throw OutputPathError(
            description: "\(target.option) \(target.path): cannot keep the file it replaces until the commit ends (\(String(cString: strerror(errno)))); "
                + "no output was written or changed")
    }

    /// Removes the temporaries (rank 0; the others hold none). Safe to call more than once.
    public func abandon() {
        guard open else { return }
        open = false
        if communicator.rank == 0 {
            for target in targets { unlink(target.temporary) }
            OutputCleanup.forget()
        }
    }
}

/// The commit locks of a job's output folders: an exclusive `flock` on each folder itself (no
/// lock file is left behind), taken in a fixed order (so two jobs never wait on each other) and
/// held for the renames only. A job that cannot have them within a minute fails, saying which folder.
struct CommitLock {
    private var descriptors: [Int32] = []

    init(folders: [String]) throws {
        for folder in Set(folders).sorted() {
            let fd = Glibc.open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                release()
                throw OutputPathError(description: "cannot open the folder \(folder) to lock it for the commit (\(reason)); no output was written or changed")
            }
            descriptors.append(fd)
            var waited = 0.0
            while flock(fd, LOCK_EX | LOCK_NB) != 0 {
                guard errno == EWOULDBLOCK || errno == EINTR, waited < 60 else {
                    release()
                    throw OutputPathError(
                        description: "another job has held the commit lock of \(folder) for a minute; no output was written or changed")
                }
                usleep(10_000)
                waited += 0.01
            }
        }
    }

    func release() { descriptors.forEach { close($0) } }
}

/// Small whole-file outputs (a profile's trace and timeline, probe figures) written as the
/// `.npy` outputs are: each into a temporary beside its target, every byte checked, and renamed
/// over the targets only when all are written. A full disk or a failing device leaves the
/// targets as they were and says which file and why.
public enum WholeFiles {
    /// Writes `files` all or none; `what` names each in messages ("the trace").
    public static func write(_ files: [(data: [UInt8], path: String, what: String)]) throws {
        var written: [(temporary: String, final: String)] = []
        do {
            for file in files {
                let final = try OutputPaths.resolvedTarget(file.path)
                if let kind = NpyFile.irregularKind(final) {
                    throw OutputPathError(description: "cannot write \(file.what) to \(file.path): it is \(kind), not a regular file")
                }
                let folder = OutputPaths.parent(of: final), name = (final as NSString).lastPathComponent
                var template = Array(((folder as NSString).appendingPathComponent(".\(OutputTransaction.temporaryStem(name)).seqpar-XXXXXX")).utf8CString)
                let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
                guard fd >= 0 else { throw failure(file, errno) }
                let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                written.append((temporary, final))
                let mask = umask(0)
                umask(mask)
                fchmod(fd, 0o666 & ~mask)
                var offset = 0
                let status: Int32 = file.data.withUnsafeBytes { bytes in
                    while offset < bytes.count {
                        let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                        if n < 0 {
                            if errno == EINTR { continue }
                            return errno
                        }
                        offset += n
                    }
                    return fsync(fd) == 0 || errno == EINVAL ? 0 : errno
                }
                let closed = close(fd) == 0 ? 0 : errno
                if status != 0 || closed != 0 { throw failure(file, status != 0 ? status : closed) }
            }
            for file in written {
                guard rename(file.temporary, file.final) == 0 else {
                    throw OutputPathError(description: "cannot move \(file.final) into place (\(String(cString: strerror(errno))))")
                }
            }
        } catch {
            for file in written { unlink(file.temporary) }
            throw error
        }
    }

    private static func failure(_ file: (data: [UInt8], path: String, what: String), _ code: Int32) -> OutputPathError {
        OutputPathError(description: "cannot write \(file.what) to \(file.path) (\(String(cString: strerror(code)))); it was left as it was")
    }
}
