// swift-tools-version:6.0
// seqpar: exact softmax attention over sequences sharded across MPI ranks.
//
// Modules are split by dependency so the numeric core is testable in one process:
//   CMPI, CBLAS        C shims (system libraries, static inline accessors only)
//   AttentionCore      tensors, masks, reference + fused local kernel, merge, .npy (BLAS, no MPI)
//   SequenceParallel   Communicator and the distributed strategies (MPI)
//   ClusterConfig      cluster configs and the mpirun / Slurm command built from them (no MPI)
//   seqpar             the command-line tool
import PackageDescription

let package = Package(
    name: "seqpar",
    products: [
        .executable(name: "seqpar", targets: ["seqpar"]),
        .library(name: "AttentionCore", targets: ["AttentionCore"]),
        .library(name: "SequenceParallel", targets: ["SequenceParallel"]),
        .library(name: "ClusterConfig", targets: ["ClusterConfig"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
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
        .target(name: "AttentionCore", dependencies: ["CBLAS"]),
        .target(name: "SequenceParallel", dependencies: ["AttentionCore", "CMPI", "CBLAS"]),
        .target(name: "ClusterConfig"),
        .executableTarget(
            name: "seqpar",
            dependencies: [
                "AttentionCore",
                "SequenceParallel",
                "ClusterConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "AttentionCoreTests", dependencies: ["AttentionCore"]),
        .testTarget(name: "SequenceParallelTests", dependencies: ["AttentionCore", "SequenceParallel"]),
        .testTarget(name: "SeqparEndToEndTests", dependencies: ["seqpar", "AttentionCore"]),
        .testTarget(name: "ClusterConfigTests", dependencies: ["ClusterConfig", "SequenceParallel"]),
        .testTarget(name: "MultiHostTests", dependencies: ["seqpar"]),
    ]
)
