// The MPI process environment: start-up, shut-down, errors. Every MPI call in seqpar goes through
// `check`, which turns a return code into an `MPIError` carrying MPI's own message; the world
// communicator is switched to MPI_ERRORS_RETURN at start-up so codes come back instead of aborting.

import CMPI

public struct MPIError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let code: Int32
    public let message: String

    public var description: String { "\(call) failed: \(message) (MPI error \(code))" }
}

/// Turns an MPI return code into a Swift error with MPI's own message.
@inline(__always)
package func check(_ code: Int32, _ call: @autoclosure () -> String) throws(MPIError) {
    if code != seqpar_success() { throw MPIError(call: call(), code: code, message: MPIRuntime.errorString(code)) }
}

public enum MPIRuntime {
    /// Starts MPI (threads funnelled: only the main thread calls MPI) with errors returned, not fatal.
    public static func start() throws(MPIError) {
        var provided: Int32 = 0
        var argc: Int32 = 0
        try check(MPI_Init_thread(&argc, nil, Int32(MPI_THREAD_FUNNELED), &provided), "MPI_Init_thread")
        try check(MPI_Comm_set_errhandler(seqpar_comm_world(), seqpar_errors_return()), "MPI_Comm_set_errhandler")
    }

    public static var isStarted: Bool {
        var flag: Int32 = 0
        MPI_Initialized(&flag)
        var finished: Int32 = 0
        MPI_Finalized(&finished)
        return flag != 0 && finished == 0
    }

    public static func finish() {
        if isStarted { MPI_Finalize() }
    }

    /// Ends every rank of the job: for failures that only this rank knows about, where waiting
    /// for the others to agree could hang.
    public static func abort(code: Int32) -> Never {
        MPI_Abort(seqpar_comm_world(), code)
        fatalError("MPI_Abort returned")
    }

    /// Seconds on MPI's wall clock.
    @inline(__always)
    public static func now() -> Double { MPI_Wtime() }

    public static func errorString(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(seqpar_max_error_string()) + 1)
        var length: Int32 = 0
        guard MPI_Error_string(code, &buffer, &length) == seqpar_success() else { return "unknown MPI error" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The MPI library's own version line.
    public static func libraryVersion() -> String {
        var buffer = [CChar](repeating: 0, count: Int(seqpar_max_library_version_string()) + 1)
        var length: Int32 = 0
        guard MPI_Get_library_version(&buffer, &length) == seqpar_success() else { return "unknown" }
        let text = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.split(separator: ",").first.map { String($0).trimmingCharacters() } ?? text
    }

    /// This process's host name as MPI reports it.
    public static func processorName() -> String {
        var buffer = [CChar](repeating: 0, count: Int(seqpar_max_processor_name()) + 1)
        var length: Int32 = 0
        guard MPI_Get_processor_name(&buffer, &length) == seqpar_success() else { return "unknown" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension String {
    func trimmingCharacters() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
