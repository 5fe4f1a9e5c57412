# Shared by the Launch scripts (sourced, not run): where things are and how seqpar is built.

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
