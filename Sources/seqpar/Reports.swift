// The JSON the commands print with --json, as Encodable values: one way of writing JSON for every
// command. Keys are the properties in snake_case, sorted; JSON has no infinity or NaN (an error
// can be either), so those are written as the strings "inf", "-inf" and "nan".

import AttentionCore
import Foundation
import Profiling
import SequenceParallel

enum JSONReport {
    /// One JSON object on one line.
    static func text<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // Only numbers, strings, arrays and objects of them: encoding cannot fail.
        return String(decoding: try! encoder.encode(value), as: UTF8.self)
    }
}

/// `run --json` (and `profile --json`).
struct RunReport: Encodable {
    var command = "run"
    let strategy: String
    let ranks, threads, tokens, heads, kvHeads, headDim: Int
    let mask: String
    /// Visible pairs over tokens² x heads.
    let density: Double
    let seconds, flops, gflops: Double
    let peakMemoryBytes: [Double]
    let bytesSent, bytesReceived: [Int64]
    let kernelFlops: [Double]
    /// Max over mean of the kernel FLOPs.
    let imbalance: Double
    var layout: String?
    var predictedImbalance: Double?
    var profile: ProfileFigures?
    var backward: BackwardFigures?

    struct BackwardFigures: Encodable {
        let seconds, flops, gflops: Double
        let kernelFlops: [Double]
        let bytesSent, bytesReceived: [Int64]
    }
}

/// A profiled run's figures, per rank.
struct ProfileFigures: Encodable {
    let trace, svg: String
    let loadImbalance, spanSeconds: Double
    let ranks: [Rank]

    struct Rank: Encodable {
        let computeSeconds, mergeSeconds, exposedCommunicationSeconds, communicationSeconds: Double
        let bytesSent, bytesReceived, bandwidthBytesPerSecond, overlap: Double
        let events: Int
    }

    init(_ summary: ProfileSummary, trace: String, svg: String) {
        self.trace = trace
        self.svg = svg
        loadImbalance = summary.imbalance
        spanSeconds = summary.span
        ranks = summary.ranks.map {
            Rank(
                computeSeconds: $0.compute, mergeSeconds: $0.merge, exposedCommunicationSeconds: $0.exposed, communicationSeconds: $0.communication,
                bytesSent: $0.bytesSent, bytesReceived: $0.bytesReceived, bandwidthBytesPerSecond: $0.bandwidth, overlap: $0.overlap,
                events: $0.events)
        }
    }
}

/// `verify --json`.
struct VerifyJSON: Encodable {
    var command = "verify"
    let strategy: String
    let ranks, tokens, heads, kvHeads, headDim: Int
    let mask: String
    let seconds: Double
    let passed: Bool
    let tolerance, referenceTolerance: Double
    let singleRank: Errors
    let worstRank: Int
    let reference: Errors
    let perRank: [PerRank]
    var backward: GradientJSON?

    struct Errors: Encodable {
        let rows: Int
        let oMaxAbs, oMaxRel: Double
        let oWorstToken, oWorstHead: Int
        let lseMaxAbs, lseMaxRel: Double

        init(_ e: ResultErrors) {
            rows = e.rows
            (oMaxAbs, oMaxRel, oWorstToken, oWorstHead) = (e.output.maxAbs, e.output.maxRel, e.output.token, e.output.head)
            (lseMaxAbs, lseMaxRel) = (e.lse.maxAbs, e.lse.maxRel)
        }
    }

    struct PerRank: Encodable {
        let singleRank, reference: Errors
    }
}

/// `verify --backward --json`'s backward section.
struct GradientJSON: Encodable {
    let seconds: Double
    let passed: Bool
    let singleRank: Errors
    let worstRank: Int
    let reference: Errors
    let perRank: [PerRank]

    struct Errors: Encodable {
        let queryRows, keyRows: Int
        let dqMaxAbs, dkMaxAbs, dvMaxAbs, dqMaxRel, dkMaxRel, dvMaxRel: Double

        init(_ e: GradientErrors) {
            (queryRows, keyRows) = (e.queryRows, e.keyRows)
            (dqMaxAbs, dkMaxAbs, dvMaxAbs) = (e.dq.maxAbs, e.dk.maxAbs, e.dv.maxAbs)
            (dqMaxRel, dkMaxRel, dvMaxRel) = (e.dq.maxRel, e.dk.maxRel, e.dv.maxRel)
        }
    }

    struct PerRank: Encodable {
        let singleRank, reference: Errors
    }
}

/// `info --json`.
struct InfoJSON: Encodable {
    let seqparVersion, commit, builtFor, mpiLibrary: String
    let worldSize, threads: Int
    let openblas: String
    let ranks: [Rank]

    struct Rank: Encodable {
        let rank: Int
        let host, cpu, openblasCore, openblasCoreReason: String
        let blasThreads: Int
        let sgemmGflops: Double
    }
}

/// `bench --json`.
struct BenchJSON: Encodable {
    var command = "bench"
    let ranks, threads: Int
    let sgemmPeakGflops: Double
    let sgemmKernelShapesGflops: KernelShapes
    let openblasCores: [String]
    let openblasCoreReason: String
    let results: [Result]
    let predictions: [Prediction]

    struct KernelShapes: Encodable {
        let scores, values, combined: Double
    }

    struct Result: Encodable {
        let strategy: String
        let seconds, gflops, fractionOfPeak, fractionOfKernelShapePeak: Double
        var predictedSeconds, measuredOverPredicted: Double?
        var backwardSeconds, backwardGflops, backwardFractionOfPeak: Double?
    }

    struct Prediction: Encodable {
        let strategy: String
        let seconds: Double
    }
}

/// `cluster-plan --json`.
struct ClusterPlanJSON: Encodable {
    let config: String
    let command: [String]
    let shell: String
    let ranks: Int
    let hosts: [Host]
    var ranksPerNode: Int?
    var hostfile: String?

    struct Host: Encodable {
        let name: String
        let slots: Int
        var address: String?
    }
}
