// The JSON the commands print with --json, as Codable values: one way of writing JSON for every
// command, and the same types read it back (the tests decode them). Keys are the properties in
// snake_case, sorted; JSON has no infinity or NaN (an error can be either), so those are written
// as the strings "inf", "-inf" and "nan".

import AttentionCore
import Foundation
import Profiling
import SequenceParallel

/// How the reports are written and read.
public enum JSONReport {
    /// One JSON object on one line.
    public static func text<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // Only numbers, strings, arrays and objects of them: encoding cannot fail.
        return String(decoding: try! encoder.encode(value), as: UTF8.self)
    }

    /// A report read back from `text`'s JSON.
    /// - Throws: `DecodingError` when `json` is not such a report.
    public static func decode<T: Decodable>(_ type: T.Type, from json: String) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try decoder.decode(type, from: Data(json.utf8))
    }
}

/// `run --json` (and `profile --json`).
public struct RunReport: Codable {
    public var command = "run"
    public let strategy: String
    public let ranks, threads, tokens, heads, kvHeads, headDim: Int
    public let mask: String
    /// Visible pairs over tokens² x heads.
    public let density: Double
    public let seconds, flops, gflops: Double
    public let peakMemoryBytes: [Double]
    public let bytesSent, bytesReceived: [Int64]
    public let kernelFlops: [Double]
    /// Max over mean of the kernel FLOPs.
    public let imbalance: Double
    /// Packed documents: how the rows are laid out, and the max/mean kernel work that predicts.
    public var layout: String?
    /// The element type of the inputs and outputs (`--dtype`): f32, bf16 or f16.
    public var dtype = "f32"
    public var predictedImbalance: Double?
    /// Ring strategies: the K/V bytes each rank's queries read that it does not hold (at the
    /// kernel's block granularity), beside `bytesReceived`.
    public var bytesNeeded: [Int64]?
    public var profile: ProfileFigures?
    public var backward: BackwardFigures?

    /// The backward pass's figures (`--backward`).
    public struct BackwardFigures: Codable {
        public let seconds, flops, gflops: Double
        public let kernelFlops: [Double]
        public let bytesSent, bytesReceived: [Int64]
    }
}

/// A profiled run's figures, per rank.
public struct ProfileFigures: Codable {
    public let trace, svg: String
    public let loadImbalance, spanSeconds: Double
    public let ranks: [Rank]

    /// One rank's profiled figures: seconds in the kernel, in merges and in communication (all of
    /// it, and the part no computation hid), its traffic and bandwidth, overlap and events recorded.
    public struct Rank: Codable {
        public let computeSeconds, mergeSeconds, exposedCommunicationSeconds, communicationSeconds: Double
        public let bytesSent, bytesReceived, bandwidthBytesPerSecond, overlap: Double
        public let events: Int
    }

    /// The figures of `summary`, with where the trace and the timeline were written.
    public init(_ summary: ProfileSummary, trace: String, svg: String) {
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
public struct VerifyJSON: Codable {
    public var command = "verify"
    public let strategy: String
    public let ranks, tokens, heads, kvHeads, headDim: Int
    public let mask: String
    public let seconds: Double
    public let passed: Bool
    public let tolerance, referenceTolerance: Double
    public let singleRank: Errors
    public let worstRank: Int
    public let reference: Errors
    public let perRank: [PerRank]
    public var backward: GradientJSON?

    /// The errors of O and LSE against one comparison (the single-rank run or the float64
    /// reference): the rows compared, O's worst absolute and relative error and where, LSE's worst.
    public struct Errors: Codable {
        public let rows: Int
        public let oMaxAbs, oMaxRel: Double
        public let oWorstToken, oWorstHead: Int
        public let lseMaxAbs, lseMaxRel: Double

        public init(_ e: ResultErrors) {
            rows = e.rows
            (oMaxAbs, oMaxRel, oWorstToken, oWorstHead) = (e.output.maxAbs, e.output.maxRel, e.output.token, e.output.head)
            (lseMaxAbs, lseMaxRel) = (e.lse.maxAbs, e.lse.maxRel)
        }
    }

    /// One rank's output errors against the single-rank run and against the float64 reference.
    public struct PerRank: Codable {
        public let singleRank, reference: Errors
    }
}

/// `verify --backward --json`'s backward section.
public struct GradientJSON: Codable {
    public let seconds: Double
    public let passed: Bool
    public let singleRank: Errors
    public let worstRank: Int
    public let reference: Errors
    public let perRank: [PerRank]

    /// The errors of dQ, dK and dV against one comparison (the single-rank backward or the
    /// float64 reference): the query and key rows compared, and each gradient's worst absolute and relative error.
    public struct Errors: Codable {
        public let queryRows, keyRows: Int
        public let dqMaxAbs, dkMaxAbs, dvMaxAbs, dqMaxRel, dkMaxRel, dvMaxRel: Double

        public init(_ e: GradientErrors) {
            (queryRows, keyRows) = (e.queryRows, e.keyRows)
            (dqMaxAbs, dkMaxAbs, dvMaxAbs) = (e.dq.maxAbs, e.dk.maxAbs, e.dv.maxAbs)
            (dqMaxRel, dkMaxRel, dvMaxRel) = (e.dq.maxRel, e.dk.maxRel, e.dv.maxRel)
        }
    }

    /// One rank's gradient errors against the single-rank backward and against the float64 reference.
    public struct PerRank: Codable {
        public let singleRank, reference: Errors
    }
}

/// `info --json`.
public struct InfoJSON: Codable {
    public let seqparVersion, commit, builtFor, mpiLibrary: String
    public let worldSize, threads: Int
    public let openblas: String
    public let ranks: [Rank]

    public init(
        seqparVersion: String, commit: String, builtFor: String, mpiLibrary: String, worldSize: Int, threads: Int, openblas: String, ranks: [Rank]
    ) {
        (self.seqparVersion, self.commit, self.builtFor, self.mpiLibrary) = (seqparVersion, commit, builtFor, mpiLibrary)
        (self.worldSize, self.threads, self.openblas, self.ranks) = (worldSize, threads, openblas, ranks)
    }

    /// One rank's host and CPU, the OpenBLAS core it runs and why, its BLAS threads and measured sgemm rate.
    public struct Rank: Codable {
        public let rank: Int
        public let host, cpu, openblasCore, openblasCoreReason: String
        public let blasThreads: Int
        public let sgemmGflops: Double
        /// What bf16 and f16 run on here (CPUFeatures.reducedPrecisionPath: BF16Gemm.path and the units).
        public let bf16Path: String

        public init(
            rank: Int, host: String, cpu: String, openblasCore: String, openblasCoreReason: String, blasThreads: Int, sgemmGflops: Double,
            bf16Path: String
        ) {
            (self.rank, self.host, self.cpu, self.openblasCore, self.openblasCoreReason) = (rank, host, cpu, openblasCore, openblasCoreReason)
            (self.blasThreads, self.sgemmGflops, self.bf16Path) = (blasThreads, sgemmGflops, bf16Path)
        }
    }
}

/// `bench --json`.
public struct BenchJSON: Codable {
    public var command = "bench"
    public let ranks, threads: Int
    public let sgemmPeakGflops: Double
    public let sgemmKernelShapesGflops: KernelShapes
    /// With bf16 products: oneDNN's bf16 peaks, which the results' fractions are of.
    public let bf16: BF16Peaks?
    public let openblasCores: [String]
    public let openblasCoreReason: String
    public let results: [Result]
    public let predictions: [Prediction]

    public init(
        ranks: Int, threads: Int, sgemmPeakGflops: Double, sgemmKernelShapesGflops: KernelShapes, bf16: BF16Peaks? = nil, openblasCores: [String],
        openblasCoreReason: String, results: [Result], predictions: [Prediction]
    ) {
        (self.ranks, self.threads, self.sgemmPeakGflops, self.sgemmKernelShapesGflops) = (ranks, threads, sgemmPeakGflops, sgemmKernelShapesGflops)
        self.bf16 = bf16
        (self.openblasCores, self.openblasCoreReason, self.results, self.predictions) = (openblasCores, openblasCoreReason, results, predictions)
    }

    /// The sgemm peak at the kernel's two products, and their harmonic mean.
    public struct KernelShapes: Codable {
        public let scores, values, combined: Double

        public init(scores: Double, values: Double, combined: Double) { (self.scores, self.values, self.combined) = (scores, values, combined) }
    }

    /// The bf16 GEMM's peaks (square n=1024, and at the kernel's products), summed over ranks.
    public struct BF16Peaks: Codable {
        public let path: String
        public let peakGflops: Double
        public let kernelShapesGflops: KernelShapes

        public init(path: String, peakGflops: Double, kernelShapesGflops: KernelShapes) {
            (self.path, self.peakGflops, self.kernelShapesGflops) = (path, peakGflops, kernelShapesGflops)
        }
    }

    /// One strategy's best time and its figures.
    public struct Result: Codable {
        public let strategy: String
        public let seconds, gflops, fractionOfPeak, fractionOfKernelShapePeak: Double
        public var predictedSeconds, measuredOverPredicted: Double?
        public var backwardSeconds, backwardGflops, backwardFractionOfPeak: Double?

        public init(strategy: String, seconds: Double, gflops: Double, fractionOfPeak: Double, fractionOfKernelShapePeak: Double) {
            (self.strategy, self.seconds, self.gflops) = (strategy, seconds, gflops)
            (self.fractionOfPeak, self.fractionOfKernelShapePeak) = (fractionOfPeak, fractionOfKernelShapePeak)
        }
    }

    /// The cost model's prediction for one strategy (and shape).
    public struct Prediction: Codable {
        public let strategy: String
        public let seconds: Double

        public init(strategy: String, seconds: Double) { (self.strategy, self.seconds) = (strategy, seconds) }
    }
}

/// `cluster-plan --json`.
public struct ClusterPlanJSON: Codable {
    public let config: String
    public let command: [String]
    public let shell: String
    public let ranks: Int
    public let hosts: [Host]
    public var ranksPerNode: Int?
    public var hostfile: String?

    public init(config: String, command: [String], shell: String, ranks: Int, hosts: [Host]) {
        (self.config, self.command, self.shell, self.ranks, self.hosts) = (config, command, shell, ranks, hosts)
    }

    /// One host of the plan: its name, the ranks (slots) it runs and, when the config gives one, its address.
    public struct Host: Codable {
        public let name: String
        public let slots: Int
        public var address: String?

        public init(name: String, slots: Int, address: String? = nil) { (self.name, self.slots, self.address) = (name, slots, address) }
    }
}
