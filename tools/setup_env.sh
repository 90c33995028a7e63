#!/usr/bin/env bash
# One-command set-up of slab-mmdet's environment (see README, "Quick start").
#
# Creates a virtual environment with the stack pinned in requirements/stack.lock,
# builds mmcv's C++ ops against the pinned torch, installs this package editable,
# and proves the compiled ops work. Idempotent: a stamp keyed on the lock file
# (plus ENV_LAYOUT below) makes a second run on a ready machine take seconds.
#
# The environment lives in a cache keyed on that hash
# (${SLAB_MMDET_CACHE:-~/.cache/slab-mmdet}/venv-<hash>) so that fresh clones,
# such as CI's, reuse it; ./.venv is a symlink to it.
#
# ENV_LAYOUT bumps the stamp when the way the environment is built changes
# (the pins themselves live in the lock file).
#
# Environment variables:
#   SLAB_MMDET_CACHE  where environments are cached (default ~/.cache/slab-mmdet)
#   PYTHON            the interpreter to build the venv from (default python3.11, else python3)
#   MAX_JOBS          parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/requirements/stack.lock"
CACHE="${SLAB_MMDET_CACHE:-$HOME/.cache/slab-mmdet}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

say() { printf '[setup] %s\n' "$*" >&2; }
PHASE_START=$(date +%s)
# Each phase's header also says how long the previous one took (the set-up's time record).
phase() {
    local now; now=$(date +%s)
    [ -n "${PHASE_NAME:-}" ] && say "$PHASE_NAME took $((now - PHASE_START)) s"
    PHASE_NAME="$1"; PHASE_START=$now
    say "$1"
}
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ -f "$LOCK" ] || die "lock file $LOCK is missing"
ENV_LAYOUT=1
HASH="$( (cat "$LOCK"; echo "layout $ENV_LAYOUT") | sha256sum | cut -c1-16)"
VENV="$CACHE/venv-$HASH"
STAMP="$VENV/.slab-mmdet-ready"
PY="$VENV/bin/python"

# The pin of one package, exactly as written in the lock file.
pin() {
    local line
    line="$(grep -iE "^$1[=<>~!]" "$LOCK" | head -n1)" || true
    [ -n "$line" ] || die "no pin for '$1' in $LOCK"
    printf '%s' "$line"
}
# Every pin except those named (used for the last phase).
pins_except() {
    local pattern
    pattern="$(printf '^(%s)[=<>~!]' "$(IFS='|'; echo "$*")")"
    grep -vE '^\s*(#|$)' "$LOCK" | grep -viE "$pattern"
}

link_venv() {
    if [ "$(readlink "$ROOT/.venv" 2>/dev/null)" != "$VENV" ]; then
        [ -e "$ROOT/.venv" ] && [ ! -L "$ROOT/.venv" ] && die "$ROOT/.venv exists and is not a symlink; remove it"
        ln -sfn "$VENV" "$ROOT/.venv"
    fi
}

# Editable install of this checkout; re-done (seconds) when the cached venv
# points at another clone.
install_self() {
    local where
    # -I: do not let the current directory shadow what is installed.
    where="$("$PY" -I -c 'import slab_mmdet, os; print(os.path.dirname(os.path.dirname(os.path.realpath(slab_mmdet.__file__))))' 2>/dev/null || true)"
    if [ "$where" != "$ROOT" ]; then
        say "installing slab_mmdet (editable) from $ROOT"
        "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
    fi
    # `mim train slab_mmdet ...` looks for <site-packages>/slab_mmdet/.mim/tools/train.py,
    # which a PEP 660 editable install does not create: link the package there.
    local site
    site="$("$PY" -I -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    if [ "$(readlink "$site/slab_mmdet" 2>/dev/null)" != "$ROOT/slab_mmdet" ]; then
        ln -sfn "$ROOT/slab_mmdet" "$site/slab_mmdet"
    fi
}

check_stack() {
    "$PY" "$ROOT/tools/check_env.py"
}

if [ -f "$STAMP" ]; then
    link_venv
    install_self
    check_stack
    say "environment ready: $VENV (stamp $HASH)"
    exit 0
fi

START=$(date +%s)
say "building environment $VENV from $LOCK (python: $PYTHON)"
[ -n "$PYTHON" ] || die "no python3 found; set PYTHON=/path/to/python3.11"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 9), sys.version' \
    || die "$PYTHON is too old; Python >= 3.9 is needed (3.11 is what the stack was validated with)"
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PYTHON" -m venv "$VENV"
PIP=("$PY" -m pip install --disable-pip-version-check)

phase "phase 1/4: build tools"
"${PIP[@]}" -q --upgrade pip
"${PIP[@]}" -q "$(pin setuptools)" "$(pin wheel)" "$(pin ninja)"

phase "phase 2/4: torch and torchvision (upstream builds; large download on a cold pip cache)"
"${PIP[@]}" "$(pin torch)" "$(pin torchvision)" "$(pin numpy)"

phase "phase 3/4: mmcv with its C++ ops, compiled against this torch (~5 minutes on 2 cores; pip caches the wheel)"
# Without --no-build-isolation, torch is absent in the build env and mmcv's
# setup.py silently skips its ops (mmcv._ext missing later). CXX: a wrapper that
# precompiles torch's headers once for all the ops' sources (tools/cxx_with_pch.sh).
# The real compiler is resolved first: bash expands a command's prefix assignments in order,
# so SLAB_MMDET_REAL_CXX="${CXX}" beside CXX=wrapper would name the wrapper itself.
REAL_CXX="${CXX:-c++}"
MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=0 SLAB_MMDET_REAL_CXX="$REAL_CXX" \
    CXX="$ROOT/tools/cxx_with_pch.sh" "${PIP[@]}" --no-build-isolation "$(pin mmcv)"

phase "phase 4/4: mmengine, mmdet, timm, pycocotools, openmim and tools"
# openmim without its deps: its openxlab dependency downgrades setuptools.
"${PIP[@]}" --no-deps "$(pin openmim)"
mapfile -t REST < <(pins_except setuptools wheel ninja torch torchvision numpy mmcv openmim)
"${PIP[@]}" "${REST[@]}" "$(pin numpy)" "$(pin torch)" "$(pin torchvision)" "$(pin setuptools)"

install_self
check_stack
phase "done"
touch "$STAMP"
link_venv
say "environment ready in $(( $(date +%s) - START )) s: $VENV (stamp $HASH)"
