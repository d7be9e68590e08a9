#!/usr/bin/env bash
# Installs the Debian 12 packages qkv needs to build and test, skipping those already there.
# Idempotent; runs apt-get as root, or through sudo when run as a normal user.
set -euo pipefail

packages=(
  g++ cmake make pkg-config          # toolchain (CMake 3.25 as Debian 12 ships it)
  libxtensor-dev libxtensor-blas-dev # n-d arrays; xtensor-blas for the tests' reference products
  libopenblas-dev                    # gemm
  libxsmm-dev                        # JIT kernels for the small gemms (lib/numerics/blas.cpp)
  libspdlog-dev                      # logging
  nlohmann-json3-dev                 # checkpoint headers, configs, metrics
  libcli11-dev                       # command lines
  doctest-dev                        # tests
  clang libclang-rt-14-dev           # libFuzzer (tests/fuzz, scripts/fuzz.sh)
  valgrind                           # memcheck of a short training run
  openmpi-bin libopenmpi-dev         # data-parallel training and distributed sweeps (QKV_MPI, tests/mpi)
  chromium                           # headless browser for tests/browser (the attention explorer page);
                                     # Node.js and npm, which drive it, come with the machine
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages are installed"
  exit 0
fi

as_root=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  as_root=(sudo)
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
