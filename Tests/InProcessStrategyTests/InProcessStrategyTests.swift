// Every strategy run in this process on MPI_COMM_WORLD, as mpi4py tests itself: one suite, run
// at world size 1 (the test binary started alone: MPI's singleton start) and under `mpirun -np 2`
// and `-np 3`, each process checking its own rows. A strategy bug shows up here as a failed
// expectation naming the case, with no command-line tool in between.
//
// The test run itself never starts MPI: a singleton start leaves Open MPI's variables in the
// process environment (OMPI_MCA_ess=singleton, PMIX_SERVER_URI...), and every mpirun the other
// tests start would inherit them. So "strategies in-process at N ranks" starts this test binary,
// filtered to the in-process suite and marked by SEQPAR_IN_PROCESS_TESTS=1, as a child: alone for
// N = 1, under Launch/local (mpirun) for N = 2 and 3. In that child the launch tests are off and
// the in-process suite is on; each rank ends by printing how many cases it checked, which the
// launch test counts (a child that skipped the suite cannot pass).

import AttentionCore
import Foundation
import SeqparTestSupport
import SequenceParallel
import Testing

/// This process is a child started to run the in-process suite.
let isInProcessChild = ProcessInfo.processInfo.environment["SEQPAR_IN_PROCESS_TESTS"] == "1"

@Suite("Strategies in-process on MPI_COMM_WORLD")
struct InProcessStrategies {
    static let single = 1e-5, reference = 1e-4

    @Test(
        "every strategy against the single-rank kernel and float64, forward and backward",
        .enabled(if: isInProcessChild, "runs in a process of its own, started by 'strategies in-process at 1, 2 and 3 ranks'"))
    func everyStrategy() throws {
        try MPIRuntime.start()
        defer { MPIRuntime.finish() }
        let world = try Communicator.world()
        var checked = 0
        for c in StrategyCase.all {
            let errors = try c.run(on: world)
            let at = "\(c) on \(world.size) rank(s)"
            #expect(errors.outputRows == errors.expectedRows, "\(at): \(errors.outputRows) output rows over the ranks; expected \(errors.expectedRows)")
            #expect(errors.single.output.maxAbs <= Self.single, "\(at): O max abs error \(errors.single.output.maxAbs) against the single-rank kernel")
            #expect(errors.single.lse.maxRel <= Self.single, "\(at): LSE max rel error \(errors.single.lse.maxRel) against the single-rank kernel")
            #expect(errors.reference.output.maxAbs <= Self.reference, "\(at): O max abs error \(errors.reference.output.maxAbs) against float64")
            #expect(errors.reference.lse.maxRel <= Self.reference, "\(at): LSE max rel error \(errors.reference.lse.maxRel) against float64")
            if let gradients = errors.gradients {
                #expect(gradients.single <= Self.single, "\(at): dQ/dK/dV max abs error \(gradients.single) against the single-rank backward")
                #expect(gradients.reference <= Self.reference, "\(at): dQ/dK/dV max abs error \(gradients.reference) against float64")
            } else {
                #expect(c.strategy == .star, "\(at): no backward")
            }
            if world.rank == 0 {
                let backward = errors.gradients.map { String(format: ", gradients %.2e / %.2e", $0.single, $0.reference) } ?? ""
                print(String(format: "in-process: %@: O %.2e / %.2e (single-rank / float64)%@", at, errors.single.output.maxAbs, errors.reference.output.maxAbs, backward))
            }
            checked += 1
        }
        print("in-process: rank \(world.rank) of \(world.size) checked \(checked) cases")
    }
}

/// One world size at a time: the jobs do not compete with each other for the cores.
@Suite("Strategies in-process at 1, 2 and 3 ranks", .serialized)
struct InProcessLaunch {
    @Test(
        "strategies in-process at 1, 2 and 3 ranks", .enabled(if: !isInProcessChild, "this process is the in-process child"),
        arguments: [1, 2, 3])
    func ranks(_ ranks: Int) async throws {
        let result = try await runTestsAsChild(
            filter: "InProcessStrategies/everyStrategy", marker: "SEQPAR_IN_PROCESS_TESTS", ranks: ranks, environment: ["OPENBLAS_NUM_THREADS": "1"],
            timeout: 300)
        #expect(!result.timedOut, "ran past 300 s: a hang\n\(result.transcript)")
        #expect(result.status == 0, "\(result.transcript)")
        for rank in 0 ..< ranks {
            #expect(
                result.stdout.contains("in-process: rank \(rank) of \(ranks) checked \(StrategyCase.all.count) cases"),
                "rank \(rank) did not report all \(StrategyCase.all.count) cases\n\(result.transcript)")
        }
    }
}
