// The one place strategies meet the profiler and the progress meter: a kernel call recorded as a
// compute event when the communicator carries an event log, and counted by rank 0's progress meter
// (after the call, and between its query tiles) when there is one. Every strategy's kernel call,
// one query segment or several, goes through the same wrapper. Communication is recorded inside
// Communicator itself, and merges with `recording(.merge, on:)`, so no strategy repeats timing code.

import AttentionCore
import MPIBinding
import Profiling

extension LocalAttention {
    /// `accumulate` for one query segment, recorded and metered as the several-segment form is.
    @inline(__always)
    func accumulate(
        queries: UnsafePointer<Float>, querySegment: ShardSegment, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        keySegment: ShardSegment, into accumulator: AttentionAccumulator, recorder: EventLog?, progress: () -> Void = {}
    ) {
        accumulate(
            queries: queries, querySegments: CollectionOfOne(querySegment), keys: keys, values: values, keySegment: keySegment,
            into: accumulator, recorder: recorder, progress: progress)
    }

    /// The several-segment form on float32 K and V.
    @inline(__always)
    func accumulate<Segments: Collection<ShardSegment>>(
        queries: UnsafePointer<Float>, querySegments: Segments, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
        keySegment: ShardSegment, into accumulator: AttentionAccumulator, recorder: EventLog?, progress: () -> Void = {}
    ) {
        accumulate(
            queries: ElementRows(queries), querySegments: querySegments, keyValues: KeyValueRows(keys: keys, values: values), keySegment: keySegment,
            into: accumulator, recorder: recorder, progress: progress)
    }

    /// `accumulate` for several query segments against one key segment (K and V packed once),
    /// recorded as one compute event on `recorder` when there is one and the mask left the block
    /// any work (blocks it hides cost nothing and would only clutter the timeline), and fed to
    /// rank 0's progress meter per query tile when there is one.
    @inline(__always)
    func accumulate<Segments: Collection<ShardSegment>>(
        queries: ElementRows, querySegments: Segments, keyValues: KeyValueRows, keySegment: ShardSegment, into accumulator: AttentionAccumulator, recorder: EventLog?,
        progress: () -> Void = {}
    ) {
        let meter = ProgressMeter.current
        guard recorder != nil || meter != nil else {
            return accumulate(
                queries: queries, querySegments: querySegments, keyValues: keyValues, keySegment: keySegment,
                into: accumulator, progress: progress)
        }
        let flops = computedFlops, start = ProfileClock.now()
        if let meter {
            accumulate(
                queries: queries, querySegments: querySegments, keyValues: keyValues, keySegment: keySegment,
                into: accumulator,
                progress: {
                    progress()
                    meter.update(inFlight: self.computedFlops - flops)
                })
            meter.add(computedFlops - flops)
        } else {
            accumulate(
                queries: queries, querySegments: querySegments, keyValues: keyValues, keySegment: keySegment,
                into: accumulator, progress: progress)
        }
        if let recorder, computedFlops > flops { recorder.record(.compute, start: start, end: ProfileClock.now()) }
    }
}
