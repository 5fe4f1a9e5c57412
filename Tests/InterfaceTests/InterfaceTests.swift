// The C interface and the Python module over it, under real mpirun at 1 to 4 ranks: the Python
// tests (Tests/python/test_interface.py), the training example (Examples/python) against the same
// model in one process with SDPA, and a C program built here with mpicc against seqpar.h
// (Tests/c/interface_test.c). Each program judges its own results and exits nonzero on a failure;
// these tests also read the lines they print. Launch/test makes the Python environment
// (.build-python: numpy, ml_dtypes, torch, mpi4py, seqpar) and builds libSeqparC.so.

import Foundation
import SeqparTestSupport
import Testing

@Suite("C and Python interfaces under mpirun", .serialized)
struct InterfaceTests {
    /// libSeqparC.so, built beside seqpar by Launch/test.
    static func library() throws -> String {
        let path = URL(fileURLWithPath: try seqparBinary()).deletingLastPathComponent().appendingPathComponent("libSeqparC.so").path
        try #require(
            FileManager.default.fileExists(atPath: path),
            "\(path) is not built: Launch/test builds it (swift build -c release --product SeqparC)")
        return path
    }

    /// The Python with torch, mpi4py, ml_dtypes and seqpar: $SEQPAR_TEST_PYTHON or .build-python.
    static func python() throws -> String {
        let path = ProcessInfo.processInfo.environment["SEQPAR_TEST_PYTHON"] ?? packageRoot.appendingPathComponent(".build-python/bin/python").path
        let probe = try runToEnd(URL(fileURLWithPath: path), ["-c", "import torch, mpi4py, ml_dtypes, numpy, seqpar"], timeout: 120)
        try #require(probe.status == 0, "\(path) lacks torch, mpi4py, ml_dtypes or seqpar: Launch/test installs them\n\(probe.transcript)")
        return path
    }

    /// `program arguments` on `ranks` ranks through Launch/local (root variables, one BLAS thread,
    /// --oversubscribe, cleanup), with the library the Python module loads.
    static func mpirun(_ ranks: Int, _ program: String, _ arguments: [String], timeout: Double = 300) throws -> ProcessResult {
        var environment = ProcessInfo.processInfo.environment
        environment["SEQPAR_BIN"] = program
        environment["SEQPAR_LIBRARY"] = try library()
        // One torch thread per rank, as one BLAS thread: the ranks share this machine's cores.
        environment["OMP_NUM_THREADS"] = environment["OMP_NUM_THREADS"] ?? "1"
        let result = try runToEnd(packageRoot.appendingPathComponent("Launch/local"), [String(ranks)] + arguments, environment: environment, timeout: timeout)
        #expect(!result.timedOut, "a hang: killed after \(Int(timeout)) s\n\(result.transcript)")
        return result
    }

    @Test("Python: every strategy against float64 and one rank, bf16/f16, strided rows, autograd against SDPA, refusals on every rank", arguments: [1, 2, 3, 4])
    func python(ranks: Int) throws {
        let result = try Self.mpirun(ranks, try Self.python(), [packageRoot.appendingPathComponent("Tests/python/test_interface.py").path])
        #expect(result.status == 0, "\(result.transcript)")
        #expect(result.stdout.contains("test_interface: \(ranks) ranks, ") && result.stdout.contains("every rank passed"), "\(result.transcript)")
    }

    @Test("the training example: loss and every parameter's gradient as the one-process model with SDPA", arguments: [(1, "zigzag"), (2, "ring"), (3, "zigzag"), (4, "mesh")])
    func training(ranks: Int, strategy: String) throws {
        let example = packageRoot.appendingPathComponent("Examples/python/train_transformer.py").path
        let result = try Self.mpirun(ranks, try Self.python(), [example, "--strategy", strategy, "--tokens", "2051"])
        #expect(result.status == 0, "\(result.transcript)")
        let line = result.stdout.split(separator: "\n").first { $0.contains("largest relative difference") }.map(String.init) ?? ""
        #expect(line.contains("\(ranks) ranks, \(strategy), 2051 tokens"), "\(result.transcript)")
        let worst = line.split(separator: " ").last { Double($0) != nil }.flatMap { Double($0) }
        #expect(worst.map { $0 <= 1e-4 } == true, "the gradients differ beyond float32 tolerance: \(line)")
        #expect(result.stdout.contains("loss after one SGD step"), "\(result.transcript)")
    }

    @Test("the training example's check can fail: a tolerance below float32 rounding is not met")
    func trainingCheckBites() throws {
        let example = packageRoot.appendingPathComponent("Examples/python/train_transformer.py").path
        let result = try Self.mpirun(2, try Self.python(), [example, "--tokens", "301", "--tolerance", "1e-12"])
        #expect(result.status != 0, "\(result.transcript)")
    }

    @Test(
        "C: seqpar.h from a C program on its own communicator, forward and backward against double, refusals as codes",
        arguments: [(1, "zigzag"), (2, "ring"), (3, "zigzag"), (4, "heads")])
    func c(ranks: Int, strategy: String) throws {
        let scratch = try ScratchDirectory()
        let binary = scratch.path("interface_test"), library = URL(fileURLWithPath: try Self.library()).deletingLastPathComponent().path
        let build = try runToEnd(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "mpicc", "-O2", "-Wall", "-Wextra", "-Werror", "-I", packageRoot.appendingPathComponent("Sources/CSeqpar/include").path,
                packageRoot.appendingPathComponent("Tests/c/interface_test.c").path, "-L", library, "-lSeqparC", "-Wl,-rpath,\(library)", "-lm", "-o", binary,
            ], timeout: 120)
        try #require(build.status == 0, "\(build.transcript)")
        let result = try Self.mpirun(ranks, binary, [strategy])
        #expect(result.status == 0, "\(result.transcript)")
        #expect(result.stdout.contains("interface_test: \(ranks) ranks, ") && result.stdout.contains(" checks in all, 0 failed"), "\(result.transcript)")
    }
}
