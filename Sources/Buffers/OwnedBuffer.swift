// One heap buffer with one owner: allocated in `init`, freed in `deinit`, so no call site pairs an
// allocate with a deallocate (or relies on its caller's `defer`). It sits at the bottom of the
// module graph and imports nothing: the kernels' scratch, the shards, the MPI receive buffers and
// the event log all use it.
// What it does not do: grow, copy, bounds-check in release builds, or hold non-trivial elements.

/// A fixed-size heap buffer of bitwise-copyable elements that frees itself when its last
/// reference goes.
///
/// Elements are trivial (`BitwiseCopyable`: floats, integers, plain structs of them), so the
/// buffer never deinitializes them: `deinit` only frees the memory. A buffer of `count` 0 still
/// owns a valid (one-element) allocation, so ``baseAddress`` is never nil and an MPI call may be
/// handed it with a count of 0.
///
/// ## Speed
///
/// Kernels read ``buffer`` or ``baseAddress`` once, outside their loops, and index the pointer:
/// the class is the owner, never touched per element on a hot path. ``subscript(_:)`` is for
/// setup and bookkeeping code.
///
/// ## Lifetime
///
/// A pointer taken from ``buffer`` or ``baseAddress`` is valid while the buffer is alive. An
/// owner in a stored property lives as long as the object that holds it, so that object's methods
/// may use the pointer freely. An owner in a local constant lives to the end of its scope across
/// calls in practice (Swift's lexical lifetimes), but the language promises it only inside
/// ``withUnsafeMutableBufferPointer(_:)`` or `withExtendedLifetime(_:_:)`. Use one of those where
/// a pointer escapes into something that completes later, above all a non-blocking MPI request
/// (`MPI_Isend`, `MPI_Irecv`), which reads or writes the memory until its `MPI_Wait` returns:
///
///     let incoming = OwnedBuffer<Float>(uninitializedCount: n)
///     try withExtendedLifetime(incoming) {
///         var request = try communicator.irecv(incoming.buffer, from: left, tag: 0)
///         compute()
///         try communicator.wait(&request)
///     }
public final class OwnedBuffer<Element: BitwiseCopyable> {
    /// The elements, `count` of them. Valid while this buffer is alive (see "Lifetime").
    public let buffer: UnsafeMutableBufferPointer<Element>
    /// Called with the address just before it is freed (tests only).
    let onFree: ((UnsafeMutableRawPointer) -> Void)?

    /// A buffer of `count` elements whose values are whatever the memory held: for buffers that
    /// are written in full before they are read (receive buffers, packed copies, outputs).
    public convenience init(uninitializedCount count: Int) {
        self.init(uninitializedCount: count, onFree: nil)
    }

    /// A buffer of `count` copies of `value`: `repeating: 0` is a zeroed buffer, made by one memset
    /// (this generic class is not specialised for its callers, and its element-by-element fill
    /// ran at a few bytes per cycle: 1-2% of a backward pass).
    public convenience init(repeating value: Element, count: Int) {
        self.init(uninitializedCount: count, onFree: nil)
        let slots = Swift.max(1, count)
        if withUnsafeBytes(of: value, { $0.allSatisfy { $0 == 0 } }) {
            let raw = UnsafeMutableRawPointer(buffer.baseAddress!)
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: slots * MemoryLayout<Element>.stride)
            raw.bindMemory(to: Element.self, capacity: slots)
        } else {
            buffer.baseAddress!.initialize(repeating: value, count: slots)
        }
    }

    /// - Parameter onFree: a test's hook, called once from `deinit` with the address it frees.
    init(uninitializedCount count: Int, onFree: ((UnsafeMutableRawPointer) -> Void)?) {
        precondition(count >= 0, "OwnedBuffer: negative count \(count)")
        buffer = UnsafeMutableBufferPointer(start: .allocate(capacity: Swift.max(1, count)), count: count)
        self.onFree = onFree
    }

    deinit {
        let storage = buffer.baseAddress!
        onFree?(UnsafeMutableRawPointer(storage))
        storage.deallocate()
    }

    /// The number of elements.
    @inlinable
    public var count: Int { buffer.count }

    /// The first element's address; never nil, also when `count` is 0.
    @inlinable
    public var baseAddress: UnsafeMutablePointer<Element> { buffer.baseAddress! }

    /// Element `index`, unchecked in release builds (as the buffer pointer's subscript).
    @inlinable
    public subscript(index: Int) -> Element {
        get { buffer[index] }
        set { buffer[index] = newValue }
    }

    /// Runs `body` with the elements; the buffer stays alive until `body` returns.
    @inlinable
    public func withUnsafeMutableBufferPointer<Result, Failure: Error>(
        _ body: (UnsafeMutableBufferPointer<Element>) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        // `self` is a guaranteed argument: the caller holds it for the whole call.
        try body(buffer)
    }
}
