#!/usr/bin/env bash
# A C++ compiler wrapper that makes mmcv's C++ ops build in about half the time
# (tools/setup_env.sh sets CXX to it for the mmcv build; docs/benchmarks.md, "Set-up time").
#
# 63 of mmcv 2.1.0's 77 CPU sources start with #include "pytorch_cpp_helper.hpp", which pulls
# in torch's headers: parsing them is most of each file's compile time. On its first call
# this wrapper precompiles that header (GCC's .gch, written beside it, once, under a lock,
# with exactly the flags of the compile that asked), and every compile then loads it instead
# of parsing the headers again. GCC checks that a .gch matches the compile's flags and
# ignores it otherwise (-Winvalid-pch says so), so the ops built are the same either way.
# -g0: no debug information (mmcv's build inherits Python's -g; the ops do not need it).
set -euo pipefail
real="${SLAB_MMDET_REAL_CXX:-c++}"
if [[ "$(command -v "$real")" -ef "${BASH_SOURCE[0]}" ]]; then
    # Calling itself would recurse for ever, each call adding its flags.
    echo "cxx_with_pch.sh: SLAB_MMDET_REAL_CXX=$real is this wrapper; set it to the real compiler" >&2
    exit 2
fi
args=("$@")
src=""; common=""
for arg in "${args[@]}"; do
    case "$arg" in
        *.cpp) src="$arg" ;;
        -I*/csrc/common) common="${arg#-I}" ;;
    esac
done
if [[ -n "$src" && -n "$common" && -f "$common/pytorch_cpp_helper.hpp" ]]; then
    pch="$common/pytorch_cpp_helper.hpp.gch"
    (
        flock 9
        if [[ ! -f "$pch" ]]; then
            # The compile's own flags, without its dependency file, source and object.
            pch_args=(); skip=0
            for arg in "${args[@]}"; do
                if ((skip)); then skip=0; continue; fi
                case "$arg" in
                    -MMD|-c|"$src") ;;
                    -MF|-o) skip=1 ;;
                    *) pch_args+=("$arg") ;;
                esac
            done
            "$real" "${pch_args[@]}" -g0 -x c++-header "$common/pytorch_cpp_helper.hpp" -o "$pch.tmp$$"
            mv "$pch.tmp$$" "$pch"
        fi
    ) 9>"$common/.pch.lock"
fi
exec "$real" "${args[@]}" -g0 -Winvalid-pch
