# Shared by the Launch scripts (sourced, not run): where things are and how seqpar is built.

seqpar_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Swift's default x86-64 target is SSE2, which splits the kernel's 16-lane vectors into four
# and has no FMA. Build for AVX2+FMA when this CPU has them (every x86 server since 2013);
# SEQPAR_TARGET_CPU overrides: a CPU name (e.g. native, skylake-avx512) or "generic".
seqpar_swift_flags() {
    local cpu=${SEQPAR_TARGET_CPU:-}
    if [ -z "$cpu" ]; then
        if [ "$(uname -m)" = x86_64 ] && grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null; then
            cpu=haswell
        else
            cpu=generic
        fi
    fi
    [ "$cpu" = generic ] || printf '%s\n' -Xswiftc -target-cpu -Xswiftc "$cpu"
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
# from the session's contact.txt) are removed. Ranks whose mpirun died end by themselves (seqpar's
# watchdog notices within a second). Returns the command's exit status.
seqpar_run_job() {
    SEQPAR_JOB_DIR=$(mktemp -d "${TMPDIR:-/tmp}/seqpar-job.XXXXXX")
    export SEQPAR_JOB_DIR
    # In a process group of its own (set -m), so that a signal sent to this script's group
    # reaches mpirun once, passed on by the trap: a second SIGTERM makes mpirun quit at once,
    # leaving its ranks behind.
    set -m
    "$@" &
    local child=$! status=0 family=
    set +m
    trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
    while :; do
        wait "$child" && status=0 || status=$?
        kill -0 "$child" 2>/dev/null || break      # a trapped signal ended the wait, not the child
    done
    trap - TERM INT HUP
    if [ "$status" -ne 0 ]; then
        sleep 1                                      # let ranks whose mpirun died notice and leave
        local file
        if [ -f "$SEQPAR_JOB_DIR/outputs" ]; then
            while IFS= read -r -d '' file; do
                case ${file##*/} in .*.seqpar-??????) rm -f -- "$file" ;; esac
            done < "$SEQPAR_JOB_DIR/outputs"
        fi
        local session
        for session in "${TMPDIR:-/tmp}"/ompi.*."$(id -u)"/pid."$child"; do
            [ -d "$session" ] || continue
            if [ -f "$session/contact.txt" ]; then
                family=$(sed -n '1s/^\([0-9]*\).*/\1/p' "$session/contact.txt")
                if [[ "$family" =~ ^[0-9]+$ ]] && [ "$family" -gt 0 ]; then
                    family=$(printf '%x' $((family >> 16)))
                    rm -f -- /dev/shm/vader_segment.*."$family"[0-9a-f][0-9a-f][0-9a-f][0-9a-f].*
                fi
            fi
            rm -rf -- "$session"
        done
    fi
    rm -rf -- "$SEQPAR_JOB_DIR"
    return "$status"
}
