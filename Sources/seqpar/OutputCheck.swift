// Output paths are checked before the first FLOP: a run of minutes must not end in "cannot write".
// The check opens the path for writing as the write will (creating it, then removing what it
// created), so a missing folder, a read-only file system or /proc fail here, with the reason.

import ArgumentParser
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

enum OutputCheck {
    /// Options that take a path take the next word whatever it is (so `--out -o.npy` works);
    /// one that looks like an option (`--out --lse L.npy`) is refused, saying how to mean a file of that name.
    static func notAnOption(_ path: String?, option: String) throws {
        guard let path, path.hasPrefix("--") else { return }
        throw ValidationError("\(option) needs a file name but got the option \(path); give the file first (write ./\(path) for a file of that name).")
    }

    /// Throws a ValidationError naming `option` and the path when it cannot be written.
    static func writable(_ path: String?, option: String) throws {
        guard let path else { return }
        guard !path.isEmpty else { throw ValidationError("\(option) needs a file name (got an empty one).") }
        try notAnOption(path, option: option)
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue {
            throw ValidationError("\(option) \(path) is a folder; expected a file name.")
        }
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty, !(FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder) && isFolder.boolValue) {
            throw ValidationError("\(option) \(path): the folder \(folder) does not exist; create it first.")
        }
        // Not a regular file (a FIFO, whose open would block, or a device): never opened here;
        // OutputPaths refuses it on every rank, naming its kind, once MPI runs.
        var status = stat()
        if stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG { return }
        // Created here: removed again. Existing: opened without truncating. Several ranks may
        // check the same path at once, so a file that appears or goes meanwhile is no failure.
        var descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        if descriptor >= 0 {
            close(descriptor)
            unlink(path)
            return
        }
        if errno == EEXIST {
            descriptor = open(path, O_WRONLY)
            if descriptor >= 0 || errno == ENOENT {
                if descriptor >= 0 { close(descriptor) }
                return
            }
        }
        throw ValidationError("\(option) \(path) cannot be written: \(String(cString: strerror(errno))).")
    }
}
