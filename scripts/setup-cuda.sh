#!/usr/bin/env bash
# Set up a CUDA 13.0 build toolchain for medrl on a machine WITHOUT a GPU or CUDA toolkit.
# Recipe: /work/shared/notes/cuda-build.md (docs/cuda.md explains usage).
#
# Idempotent: re-running only redoes what is missing or out of date. Creates, under <repo>/.cudabuild:
#   venv/    python venv with the pinned CUDA 13.0 wheels (nvcc, nvvm, cudart, cublas, nvrtc, curand)
#            + unversioned link names (libcudart.so, libcublas.so, ...) in nvidia/cu13/lib
#   stub/    link-time stub libcuda.so (soname libcuda.so.1) defining every cu* driver function
#            that cudarc's driver bindings reference (the real driver is loaded on the GPU machine)
#   env.sh   exports CUDA_PATH, CUDA_ROOT, PATH, CUDA_COMPUTE_CAP, LIBRARY_PATH for cargo
#
# Env overrides: PYTHON (default python3), CUDA_COMPUTE_CAP (default 90 = H100/H200),
#                CUDABUILD_DIR (default <repo>/.cudabuild).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="${CUDABUILD_DIR:-$ROOT/.cudabuild}"
V="$B/venv"
STUB="$B/stub"
PYTHON="${PYTHON:-python3}"
CAP="${CUDA_COMPUTE_CAP:-90}"

# CUDA 13.0 wheels: the GPU machine's driver (580) is CUDA 13.0, and PTX from a newer toolkit fails
# there ("Unsupported .version"). nvidia-nvvm must be pinned too, or pip pulls a newer nvvm whose
# PTX the 13.0 ptxas rejects. curand 10.4.0.x is the CUDA 13.0 release of curand.
REQS=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  "nvidia-cublas==13.0.*"
  "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-curand==10.4.0.*"
)

log() { echo "[setup-cuda] $*" >&2; }
die() { echo "[setup-cuda] ERROR: $*" >&2; exit 1; }

mkdir -p "$B"

# --- 1. venv with the pinned wheels ------------------------------------------------------------
STAMP="$V/.medrl-reqs"
WANT="$(printf '%s\n' "${REQS[@]}")"
if [[ -x "$V/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  log "venv up to date: $V"
else
  [[ -x "$V/bin/python" ]] || { log "creating venv $V"; "$PYTHON" -m venv "$V"; }
  log "installing CUDA 13.0 wheels (~1 GB download the first time)"
  nice -n 15 "$V/bin/pip" install --disable-pip-version-check -q "${REQS[@]}"
  printf '%s\n' "$WANT" > "$STAMP"
fi

SITE="$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CU13="$SITE/nvidia/cu13"
[[ -x "$CU13/bin/nvcc" ]] || die "nvcc not found at $CU13/bin/nvcc"
NVCC_REL="$("$CU13/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
[[ "$NVCC_REL" == 13.0 ]] || die "nvcc reports release '$NVCC_REL', expected 13.0"

# --- 2. unversioned .so link names ---------------------------------------------------------------
# e.g. libcublas.so -> libcublas.so.13, libcurand.so -> libcurand.so.10 (shortest versioned name =
# the soname).
for lib in cudart cublas cublasLt nvrtc curand; do
  target="$(cd "$CU13/lib" && ls -1 "lib$lib.so."[0-9]* 2>/dev/null | awk '{ print length, $0 }' | sort -n | head -1 | cut -d' ' -f2-)"
  [[ -n "$target" ]] || die "no lib$lib.so.* in $CU13/lib"
  if [[ "$(readlink "$CU13/lib/lib$lib.so" 2>/dev/null)" != "$target" ]]; then
    ln -sfn "$target" "$CU13/lib/lib$lib.so"
    log "linked lib$lib.so -> $target"
  fi
done

# --- 3. stub libcuda.so --------------------------------------------------------------------------
# The cudarc version comes from Cargo.lock (the one candle-core uses).
LOCK="$ROOT/Cargo.lock"
[[ -f "$LOCK" ]] || die "no $LOCK"
CUDARC_VER="$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$LOCK")"
[[ -n "$CUDARC_VER" ]] || die "cudarc not found in $LOCK"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
find_cudarc() { ls -d "$CARGO_HOME"/registry/src/*/"cudarc-$CUDARC_VER" 2>/dev/null | head -1; }
CUDARC_SRC="$(find_cudarc)"
if [[ -z "$CUDARC_SRC" ]]; then
  log "cudarc-$CUDARC_VER sources missing; running cargo fetch"
  (cd "$ROOT" && cargo fetch -q)
  CUDARC_SRC="$(find_cudarc)"
fi
[[ -n "$CUDARC_SRC" ]] || die "cudarc-$CUDARC_VER sources not found under $CARGO_HOME/registry/src"
BINDINGS="$CUDARC_SRC/src/driver/sys/mod.rs"
[[ -f "$BINDINGS" ]] || die "no driver bindings at $BINDINGS"

# Every function named cu[A-Z]... declared in the bindings (`pub unsafe fn cuX(` wrappers and the
# `fn cuX(` extern declarations; both give the same names). No version cfg filtering: defining
# extra names in a link-time stub is harmless.
mkdir -p "$STUB"
NAMES="$STUB/symbols.txt"
grep -oE '\bfn[[:space:]]+cu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' "$BINDINGS" \
  | sed -E 's/^fn[[:space:]]+//; s/[[:space:]]*\($//' | LC_ALL=C sort -u > "$NAMES.new"
N="$(wc -l < "$NAMES.new")"
(( N >= 100 )) || die "only $N cu* functions found in $BINDINGS; bindings layout changed?"

if [[ -f "$STUB/libcuda.so.1" && -f "$NAMES" ]] && cmp -s "$NAMES" "$NAMES.new" \
   && [[ "$(cat "$STUB/.source" 2>/dev/null)" == "$BINDINGS" ]]; then
  rm -f "$NAMES.new"
  log "stub libcuda up to date: $STUB ($N symbols, cudarc $CUDARC_VER)"
else
  mv "$NAMES.new" "$NAMES"
  {
    echo "/* Generated by scripts/setup-cuda.sh from $BINDINGS. Link-time stub only: */"
    echo "/* every function returns CUDA_ERROR_STUB_LIBRARY (34). Never ship or load it. */"
    while read -r s; do echo "int $s(void) { return 34; }"; done < "$NAMES"
  } > "$STUB/libcuda_stub.c"
  CC="${CC:-cc}"
  "$CC" -shared -fPIC -O0 -w -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so.1" "$STUB/libcuda_stub.c"
  ln -sfn libcuda.so.1 "$STUB/libcuda.so"
  echo "$BINDINGS" > "$STUB/.source"
  log "built stub $STUB/libcuda.so.1 ($N symbols, cudarc $CUDARC_VER)"
fi

# --- 4. env.sh ---------------------------------------------------------------------------------
cat > "$B/env.sh.new" <<EOF
# Generated by scripts/setup-cuda.sh. Source before cargo build --features cuda.
export CUDA_PATH="$CU13"
export CUDA_ROOT="$CU13"
case ":\$PATH:" in *":$CU13/bin:"*) ;; *) export PATH="$CU13/bin:\$PATH" ;; esac
export CUDA_COMPUTE_CAP=$CAP
case ":\${LIBRARY_PATH:-}:" in *":$STUB:"*) ;; *) export LIBRARY_PATH="$CU13/lib:$STUB\${LIBRARY_PATH:+:\$LIBRARY_PATH}" ;; esac
EOF
mv "$B/env.sh.new" "$B/env.sh"
log "wrote $B/env.sh (CUDA_PATH=$CU13, CUDA_COMPUTE_CAP=$CAP)"
