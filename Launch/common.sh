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
