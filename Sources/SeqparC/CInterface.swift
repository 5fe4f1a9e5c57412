// seqpar's C interface (Sources/CSeqpar/include/seqpar.h): a plan is a DistributedAttention on a
// duplicate of the caller's communicator, held by the C caller as an opaque pointer. Every error
// comes back as a return code and a message; nothing here traps or aborts on bad input.

import AttentionCore
import BlasRuntime
import CSeqpar
import FileFormats
import SequenceParallel

/// What a `seqpar_plan *` points at.
final class Plan {
    let attention: DistributedAttention
    /// The last failed call's message, zero-terminated ("" after a success).
    var error: [CChar] = [0]

    init(_ attention: DistributedAttention) { self.attention = attention }

    func fail(_ error: Error) -> Int32 {
        self.error = Array(String(describing: error).utf8CString)
        return code(error)
    }

    func succeed() -> Int32 {
        error = [0]
        return Int32(SEQPAR_OK)
    }

    static func from(_ pointer: OpaquePointer?) -> Plan? {
        pointer.map { Unmanaged<Plan>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }
}

private func code(_ error: Error) -> Int32 {
    if error is MPIError { return Int32(SEQPAR_ERROR_MPI) }
    if let failure = error as? CollectiveFailure, failure.failures.isEmpty { return Int32(SEQPAR_ERROR_MPI) }
    return Int32(SEQPAR_ERROR_INPUT)
}

struct OptionsError: Error, CustomStringConvertible {
    let description: String
}

/// The plan's problem from the C options, each value checked with a message naming the field.
func problem(_ options: seqpar_options) throws -> (StrategyName, tokens: Int, AttentionShape, AttentionMask, ElementType, threads: Int) {
    let name = options.strategy.map { String(cString: $0) } ?? StrategyName.zigzag.rawValue
    guard let strategy = StrategyName(rawValue: name) else {
        throw OptionsError(description: "strategy '\(name)' is not one of " + StrategyName.allCases.map(\.rawValue).joined(separator: ", "))
    }
    guard options.tokens >= 1 else { throw OptionsError(description: "tokens must be at least 1 (got \(options.tokens))") }
    let tokens = Int(options.tokens)
    let kvHeads = options.kv_heads == 0 ? options.heads : options.kv_heads
    guard options.scale >= 0, options.scale.isFinite else { throw OptionsError(description: "scale must be positive, or 0 for 1/sqrt(head_dim) (got \(options.scale))") }
    let shape = try AttentionShape(
        heads: Int(options.heads), kvHeads: Int(kvHeads), headDim: Int(options.head_dim), scale: options.scale == 0 ? nil : Float(options.scale))
    guard options.window >= 0 else { throw OptionsError(description: "window must be positive, or 0 for none (got \(options.window))") }
    var mask: AttentionMask = options.window > 0 ? .window(Int(options.window)) : (options.causal != 0 ? .causal : .none)
    if options.s2_block != 0 {
        mask = .s2(try S2Pattern(block: Int(options.s2_block), local: Int(options.s2_local), stride: Int(options.s2_stride)))
    }
    if let offsets = options.cu_seqlens {
        guard options.documents >= 1 else {
            throw OptionsError(description: "cu_seqlens is given but documents is \(options.documents); pass how many documents it bounds (its length minus one)")
        }
        let boundaries = try DocumentBoundaries(
            offsets: (0 ... Int(options.documents)).map { Int(offsets[$0]) }, tokens: tokens, source: "cu_seqlens")
        mask = .documents(boundaries, within: mask)
    }
    let elementType: ElementType
    switch options.dtype {
    case SEQPAR_F32: elementType = .f32
    case SEQPAR_BF16: elementType = .bf16
    case SEQPAR_F16: elementType = .f16
    default: throw OptionsError(description: "dtype \(options.dtype.rawValue) is not SEQPAR_F32, SEQPAR_BF16 or SEQPAR_F16")
    }
    guard options.threads >= 0 else { throw OptionsError(description: "threads must be at least 1, or 0 for 1 (got \(options.threads))") }
    return (strategy, tokens, shape, mask, elementType, max(1, Int(options.threads)))
}

private func copy(_ text: String, into message: UnsafeMutablePointer<CChar>?, capacity: Int) {
    guard let message, capacity > 0 else { return }
    let bytes = Array(text.utf8.prefix(capacity - 1))
    for (i, byte) in bytes.enumerated() { message[i] = CChar(bitPattern: byte) }
    message[bytes.count] = 0
}

@_cdecl("seqpar_plan_create")
public func seqpar_plan_create(
    _ comm: OpaquePointer?, _ options: UnsafePointer<seqpar_options>?, _ plan: UnsafeMutablePointer<OpaquePointer?>?,
    _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int
) -> Int32 {
    plan?.pointee = nil
    guard let plan, let options else {
        copy("seqpar_plan_create: options and plan must not be NULL", into: message, capacity: capacity)
        return Int32(SEQPAR_ERROR_INPUT)
    }
    guard let comm else {
        copy("seqpar_plan_create: the communicator is NULL (MPI_COMM_NULL); pass the communicator the plan runs on", into: message, capacity: capacity)
        return Int32(SEQPAR_ERROR_INPUT)
    }
    do {
        let communicator = try Communicator.duplicating(comm)
        // Every rank reads its own options; they must agree, or one rank's refusal is everyone's.
        let (strategy, tokens, shape, mask, elementType, threads) = try communicator.together { try problem(options.pointee) }
        let problems = try communicator.allgather("\(strategy), \(tokens) tokens, \(shape), mask \(mask), \(elementType)")
        if let other = problems.firstIndex(where: { $0 != problems[0] }) {
            throw OptionsError(description: "the ranks were given different options: rank 0 has \(problems[0]) but rank \(other) has \(problems[other])")
        }
        let attention = try DistributedAttention(
            strategy: strategy, tokens: tokens, shape: shape, mask: mask, threads: threads, elementType: elementType, communicator: communicator)
        plan.pointee = OpaquePointer(Unmanaged.passRetained(Plan(attention)).toOpaque())
        copy("", into: message, capacity: capacity)
        return Int32(SEQPAR_OK)
    } catch {
        copy(String(describing: error), into: message, capacity: capacity)
        return code(error)
    }
}

@_cdecl("seqpar_plan_destroy")
public func seqpar_plan_destroy(_ plan: OpaquePointer?) {
    guard let plan else { return }
    Unmanaged<Plan>.fromOpaque(UnsafeRawPointer(plan)).release()
}

@_cdecl("seqpar_plan_rows")
public func seqpar_plan_rows(_ plan: OpaquePointer?) -> Int64 {
    Plan.from(plan).map { Int64($0.attention.localRows) } ?? 0
}

@_cdecl("seqpar_plan_range_count")
public func seqpar_plan_range_count(_ plan: OpaquePointer?) -> Int64 {
    Plan.from(plan).map { Int64($0.attention.localRanges.count) } ?? 0
}

@_cdecl("seqpar_plan_range")
public func seqpar_plan_range(
    _ plan: OpaquePointer?, _ index: Int64, _ start: UnsafeMutablePointer<Int64>?, _ stop: UnsafeMutablePointer<Int64>?
) -> Int32 {
    guard let plan = Plan.from(plan) else { return Int32(SEQPAR_ERROR_INPUT) }
    let ranges = plan.attention.localRanges
    guard index >= 0, index < ranges.count else {
        return plan.fail(OptionsError(description: "range \(index) does not exist: this rank holds \(ranges.count) ranges"))
    }
    start?.pointee = Int64(ranges[Int(index)].lowerBound)
    stop?.pointee = Int64(ranges[Int(index)].upperBound)
    return plan.succeed()
}

/// BF16Gemm.path's description, kept for the life of the process.
private let bf16PathText: [CChar] = Array(BF16Gemm.path.description.utf8CString)

@_cdecl("seqpar_bf16_path")
public func seqpar_bf16_path() -> UnsafePointer<CChar>? {
    bf16PathText.withUnsafeBufferPointer { $0.baseAddress }
}

@_cdecl("seqpar_plan_error")
public func seqpar_plan_error(_ plan: OpaquePointer?) -> UnsafePointer<CChar>? {
    guard let plan = Plan.from(plan) else { return nil }
    return plan.error.withUnsafeBufferPointer { $0.baseAddress }
}

@_cdecl("seqpar_plan_agree")
public func seqpar_plan_agree(_ plan: OpaquePointer?, _ error: UnsafePointer<CChar>?) -> Int32 {
    guard let plan = Plan.from(plan) else { return Int32(SEQPAR_ERROR_INPUT) }
    do {
        try plan.attention.communicator.together {
            if let error { throw OptionsError(description: String(cString: error)) }
        }
        return plan.succeed()
    } catch {
        return plan.fail(error)
    }
}

@_cdecl("seqpar_forward")
public func seqpar_forward(
    _ plan: OpaquePointer?, _ rows: Int64, _ q: UnsafeRawPointer?, _ qStride: Int64, _ k: UnsafeRawPointer?, _ kStride: Int64,
    _ v: UnsafeRawPointer?, _ vStride: Int64, _ o: UnsafeMutableRawPointer?, _ oStride: Int64, _ lse: UnsafeMutablePointer<Float>?
) -> Int32 {
    guard let plan = Plan.from(plan) else { return Int32(SEQPAR_ERROR_INPUT) }
    let rows = Int(rows)
    do {
        try plan.attention.forward(
            q: CallerRows(q, rows: rows, rowStride: Int(qStride)), k: CallerRows(k, rows: rows, rowStride: Int(kStride)),
            v: CallerRows(v, rows: rows, rowStride: Int(vStride)), output: CallerMutableRows(o, rows: rows, rowStride: Int(oStride)), lse: lse)
        return plan.succeed()
    } catch {
        return plan.fail(error)
    }
}

@_cdecl("seqpar_backward")
public func seqpar_backward(
    _ plan: OpaquePointer?, _ rows: Int64, _ q: UnsafeRawPointer?, _ qStride: Int64, _ k: UnsafeRawPointer?, _ kStride: Int64,
    _ v: UnsafeRawPointer?, _ vStride: Int64, _ o: UnsafeRawPointer?, _ oStride: Int64, _ lse: UnsafePointer<Float>?,
    _ dO: UnsafeRawPointer?, _ dOStride: Int64, _ dq: UnsafeMutableRawPointer?, _ dqStride: Int64,
    _ dk: UnsafeMutableRawPointer?, _ dkStride: Int64, _ dv: UnsafeMutableRawPointer?, _ dvStride: Int64
) -> Int32 {
    guard let plan = Plan.from(plan) else { return Int32(SEQPAR_ERROR_INPUT) }
    let rows = Int(rows)
    do {
        try plan.attention.backward(
            q: CallerRows(q, rows: rows, rowStride: Int(qStride)), k: CallerRows(k, rows: rows, rowStride: Int(kStride)),
            v: CallerRows(v, rows: rows, rowStride: Int(vStride)), output: CallerRows(o, rows: rows, rowStride: Int(oStride)), lse: lse,
            outputGrad: CallerRows(dO, rows: rows, rowStride: Int(dOStride)), dq: CallerMutableRows(dq, rows: rows, rowStride: Int(dqStride)),
            dk: CallerMutableRows(dk, rows: rows, rowStride: Int(dkStride)), dv: CallerMutableRows(dv, rows: rows, rowStride: Int(dvStride)))
        return plan.succeed()
    } catch {
        return plan.fail(error)
    }
}
