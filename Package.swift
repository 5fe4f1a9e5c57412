// swift-tools-version:6.0
// seqpar: exact softmax attention over sequences sharded across MPI ranks.
//
// Modules are split by dependency so the numeric core is testable in one process:
//   CMPI, CBLAS        C shims (system libraries, static inline accessors only)
//   COneDNN            bf16 products as oneDNN matmul primitives (C over oneDNN's C API)
//   Buffers            OwnedBuffer: a heap buffer freed by its deinit (no dependencies)
//   AttentionCore      tensors, masks, reference + fused local kernel, merge, .npy (BLAS, no MPI)
//   Profiling          event log, per-rank profile figures, Chrome trace, SVG timeline (no MPI)
//   Planning           probe figures and the cost model, over the numeric core's masks (no MPI)
//   MPIBinding         the MPI binding: Communicator (every return code checked), runtime, failure
//                      agreement, clock sync, the watchdog (MPI, no attention)
//   SequenceParallel   the distributed strategies, their registry, per-rank I/O, verification
//   AttentionJobs      a job as the commands run it: prepare, timed run, backward, output files, verify
//                      against one rank and float64, bench's best of N, profile gathering, --strategy
//                      auto, the Codable --json reports (no ArgumentParser, nothing printed to stdout)
//   ClusterConfig      cluster configs and the mpirun / Slurm command built from them (no MPI)
//   CSeqpar, SeqparC   the C interface: seqpar.h (and the options' defaults, in C), and its Swift
//                      implementation over DistributedAttention, built as libSeqparC.so
//   seqpar             the command-line tool: argument parsing into AttentionJobs' values, printing
import PackageDescription

let package = Package(
    name: "seqpar",
    products: [
        .executable(name: "seqpar", targets: ["seqpar"]),
        .library(name: "AttentionCore", targets: ["AttentionCore"]),
        .library(name: "BlasRuntime", targets: ["BlasRuntime"]),
        .library(name: "FileFormats", targets: ["FileFormats"]),
        .library(name: "SequenceParallel", targets: ["SequenceParallel"]),
        .library(name: "AttentionJobs", targets: ["AttentionJobs"]),
        .library(name: "MPIBinding", targets: ["MPIBinding"]),
        .library(name: "Profiling", targets: ["Profiling"]),
        .library(name: "Planning", targets: ["Planning"]),
        .library(name: "ClusterConfig", targets: ["ClusterConfig"]),
        // The C interface (Sources/CSeqpar/include/seqpar.h) as libSeqparC.so, which Python's seqpar loads.
        .library(name: "SeqparC", type: .dynamic, targets: ["SeqparC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // oneDNN (Debian's libdnnl-dev) runs its products on libgomp's threads.
        .target(name: "COneDNN", linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("gomp")]),
        .target(name: "Buffers"),
        .target(name: "BlasRuntime", dependencies: ["Buffers", "CBLAS", "COneDNN", "FileFormats"]),
        .target(name: "FileFormats", dependencies: [.product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "AttentionCore", dependencies: ["Buffers", "CBLAS", "BlasRuntime", "FileFormats"]),
        .target(name: "Profiling", dependencies: ["Buffers"]),
        .target(name: "Planning", dependencies: ["AttentionCore"]),
        .target(name: "MPIBinding", dependencies: ["Buffers", "CMPI", "Profiling"]),
        .target(name: "SequenceParallel", dependencies: ["Buffers", "AttentionCore", "BlasRuntime", "FileFormats", "Profiling", "Planning", "MPIBinding"]),
        .target(name: "AttentionJobs", dependencies: ["AttentionCore", "BlasRuntime", "FileFormats", "SequenceParallel", "Profiling", "Planning"]),
        .target(name: "ClusterConfig"),
        .target(name: "CSeqpar", dependencies: ["CMPI"]),
        .target(name: "SeqparC", dependencies: ["CSeqpar", "AttentionCore", "BlasRuntime", "FileFormats", "SequenceParallel"]),
        .executableTarget(
            name: "seqpar",
            dependencies: [
                "AttentionCore",
                "BlasRuntime",
                "FileFormats",
                "SequenceParallel",
                "AttentionJobs",
                "Profiling",
                "Planning",
                "ClusterConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // seqpar as a library: a program holding its own shards calls DistributedAttention (run by the tests under mpirun).
        .executableTarget(name: "sharded-attention-example", dependencies: ["AttentionCore", "SequenceParallel"], path: "Examples/ShardedAttention"),
        // What the test targets that start processes share (package root, the binary under test,
        // a process runner with a time limit); no test framework.
        .target(name: "SeqparTestSupport", path: "Tests/SeqparTestSupport"),
        .testTarget(name: "BuffersTests", dependencies: ["Buffers"]),
        .testTarget(name: "AttentionCoreTests", dependencies: ["AttentionCore", "BlasRuntime", "FileFormats", "SeqparTestSupport"]),
        .testTarget(name: "ProfilingTests", dependencies: ["Profiling"]),
        .testTarget(name: "SequenceParallelTests", dependencies: ["AttentionCore", "AttentionJobs", "FileFormats", "SequenceParallel", "Planning"]),
        .testTarget(
            name: "SeqparEndToEndTests", dependencies: ["seqpar", "sharded-attention-example", "AttentionCore", "FileFormats", "AttentionJobs", "Profiling", "SeqparTestSupport"],
            exclude: ["HelpSnapshots"]),
        .testTarget(name: "ClusterConfigTests", dependencies: ["ClusterConfig", "SequenceParallel", "SeqparTestSupport"]),
        .testTarget(name: "MultiHostTests", dependencies: ["seqpar", "SeqparTestSupport"]),
        // The strategies in the test process itself on MPI_COMM_WORLD, started alone and under mpirun -np 2 and 3.
        .testTarget(name: "InProcessStrategyTests", dependencies: ["AttentionCore", "AttentionJobs", "SequenceParallel", "SeqparTestSupport"]),
        // The C interface (a C program built with mpicc) and the Python module, with its training example, under mpirun.
        .testTarget(name: "InterfaceTests", dependencies: ["SeqparTestSupport"]),
        // The MPI binding in the test process on MPI_COMM_WORLD, started alone and under mpirun -np 3.
        .testTarget(name: "MPIBindingTests", dependencies: ["MPIBinding", "SeqparTestSupport"]),
    ]
)
