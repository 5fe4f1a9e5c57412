# Shared by the Launch scripts (sourced, not run): where things are and how seqpar is built.
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
seqpar_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Swift's default x86-64 target is SSE2, which splits the kernel's 16-lane vectors into four
# and has no FMA. Build for the instruction set of this machine: AVX-512 (F, CD, BW, DQ, VL: Intel
# since Skylake-SP, AMD since Zen 4; the softmax runs 16 lanes at once) or AVX2+FMA (every x86
# server since 2013). The binary refuses, with a message, to start on a CPU without what it was
# built for. SEQPAR_TARGET_CPU overrides: a CPU name (e.g. haswell for a cluster whose nodes differ,
# native) or "generic".
seqpar_swift_flags() {
    local cpu=${SEQPAR_TARGET_CPU:-} level=
    if [ -z "$cpu" ]; then
        cpu=generic
        if [ "$(uname -m)" = x86_64 ]; then
            local flags
            flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
            local has_all=1 feature
            for feature in avx512f avx512cd avx512bw avx512dq avx512vl; do
                [[ " $flags " == *" $feature "* ]] || has_all=0
            done
            if [ $has_all = 1 ]; then
                cpu=skylake-avx512 level=AVX512
            elif [[ " $flags " == *" avx2 "* && " $flags " == *" fma "* ]]; then
                cpu=haswell level=AVX2
            fi
        fi
    else
        case "$cpu" in
            skylake-avx512 | x86-64-v4 | icelake-server | sapphirerapids | znver4 | znver5) level=AVX512 ;;
            haswell | x86-64-v3 | znver1 | znver2 | znver3 | skylake) level=AVX2 ;;
        esac
    fi
    [ "$cpu" = generic ] || printf '%s\n' -Xswiftc -target-cpu -Xswiftc "$cpu"
    [ -z "$level" ] || printf '%s\n' -Xswiftc "-DSEQPAR_BUILT_FOR_$level"
}

# Open MPI refuses to start as root unless told that is intended.
seqpar_mpi_root_env() {
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
}

seqpar_die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# Runs a launcher command (mpirun, or what starts it) as a child, not with exec, so that whatever
# becomes of it this job's leftovers are removed: SIGTERM, SIGINT and SIGHUP are passed on to it;
# when it has ended (even by SIGKILL), seqpar's unfinished output files listed in $SEQPAR_JOB_DIR,
# Open MPI's session directory of this mpirun (${TMPDIR:-/tmp}/ompi.HOST.UID/pid.PID) and the
# shared-memory segments of its job (/dev/shm/vader_segment.HOST.JOBID.RANK, the job family read
# from the session's contact.txt) are removed, each removal going on past one that fails. Ranks whose mpirun died end by themselves (seqpar's
# watchdog notices within a second). Returns the command's exit status.
seqpar_run_job() {
    SEQPAR_JOB_DIR=$(mktemp -d "${TMPDIR:-/tmp}/seqpar-job.XXXXXX")
    export SEQPAR_JOB_DIR
    # In a process group of its own (set -m), so that a signal sent to this script's group
    # reaches mpirun once, passed on by the trap: a second SIGTERM makes mpirun quit at once,
    # leaving its ranks behind.
    set -m
    "$@" &
    local child=$! status=0 family='' signalled=''
    set +m
    trap 'signalled=SIGTERM; kill -TERM "$child" 2>/dev/null' TERM
    trap 'signalled=SIGINT; kill -TERM "$child" 2>/dev/null' INT
    trap 'signalled=SIGHUP; kill -TERM "$child" 2>/dev/null' HUP
    while :; do
        wait "$child" && status=0 || status=$?
        kill -0 "$child" 2>/dev/null || break      # a trapped signal ended the wait, not the child
    done
    # From here on a signal is noted, not obeyed: the job has ended, and its clean-up must finish.
    trap 'signalled=${signalled:-SIGTERM}' TERM
    trap 'signalled=${signalled:-SIGINT}' INT
    trap 'signalled=${signalled:-SIGHUP}' HUP
    if [ "$status" -ne 0 ]; then
        sleep 1                                      # let ranks whose mpirun died notice and leave
        local file
        if [ -f "$SEQPAR_JOB_DIR/outputs" ]; then
            while IFS= read -r -d '' file; do
                case ${file##*/} in .*.seqpar-??????) rm -f -- "$file" || true ;; esac
            done < "$SEQPAR_JOB_DIR/outputs"
        fi
        local session
        for session in "${TMPDIR:-/tmp}"/ompi.*."$(id -u)"/pid."$child"; do
            [ -d "$session" ] || continue
            if [ -f "$session/contact.txt" ]; then
                family=$(sed -n '1s/^\([0-9]*\).*/\1/p' "$session/contact.txt" || true)
                if [[ "$family" =~ ^[0-9]+$ ]] && [ "$family" -gt 0 ]; then
                    family=$(printf '%x' $((family >> 16)))
                    rm -f -- /dev/shm/vader_segment.*."$family"[0-9a-f][0-9a-f][0-9a-f][0-9a-f].* || true
                fi
            fi
            rm -rf -- "$session" || true
        done
    fi
    # mpirun exits non-zero once signalled, even when its ranks went on to finish: rank 0 leaves
    # "finished" in the job folder when the command ended well (its outputs committed whole).
    if [ -n "$signalled" ] && [ "$status" -ne 0 ]; then
        if [ -f "$SEQPAR_JOB_DIR/finished" ]; then
            echo "$(basename "$0"): $signalled came as the job was ending; it had finished and its outputs are written whole" >&2
            status=0
        else
            echo "$(basename "$0"): stopped by $signalled; the outputs were left as they were (none written or changed)" >&2
        fi
    fi
    rm -rf -- "$SEQPAR_JOB_DIR" || true
    return "$status"
}
