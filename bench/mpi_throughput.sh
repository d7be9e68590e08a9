#!/usr/bin/env bash
# Training throughput of data parallelism on this machine (docs/distributed.md): target tokens
# per second of two transformers on the fra-eng corpus, for 1 rank x 1 thread, 2 ranks x 1 thread
# and 1 rank x 2 threads, REPEATS runs each (median printed), `uptime` beside every figure.
#
#   bench/mpi_throughput.sh [BUILD_DIR] [REPEATS]      (defaults: build, 3)
#
#   fra-eng      qkv-train's transformer with its corpus defaults (d_model 128, 4 heads, 2+2 layers,
#                ff 512, dropout 0.1), batch 64
#   small        bench/qkv_bench's transformer-small (d_model 256, 8 heads, 3+3 layers, ff 1024,
#                dropout 0.1), batch 32
set -euo pipefail
build=${1:-build}
repeats=${2:-3}
check=$build/tests/mpi/qkv-data-parallel-check
data=$(dirname "$0")/../../shared/data/fra-eng.tsv
[[ -x $check ]] || { echo "mpi_throughput: $check is not built (needs QKV_MPI)" >&2; exit 1; }
[[ -f $data ]] || { echo "mpi_throughput: SKIPPED, no $data" >&2; exit 0; }
if [[ $EUID -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

declare -A model=(
  [fra-eng]="--d-model 128 --heads 4 --layers 2 --ff 512 --dropout 0.1 --batch 64 --steps 40 --warmup 5"
  [small]="--d-model 256 --heads 8 --layers 3 --ff 1024 --dropout 0.1 --batch 32 --steps 25 --warmup 5"
)
for name in fra-eng small; do
  for layout in "1 1" "2 1" "1 2"; do
    read -r ranks threads <<<"$layout"
    rates=()
    for ((i = 0; i < repeats; i++)); do
      # shellcheck disable=SC2086
      if ((ranks == 1)); then
        line=$("$check" --data "$data" ${model[$name]} --threads "$threads" | grep '^throughput:')
      else
        output=$(mpirun --oversubscribe --mca mpi_yield_when_idle 1 -np "$ranks" "$check" --data "$data" \
                   ${model[$name]} --threads "$threads")
        line=$(grep '^throughput:' <<<"$output")
        bytes=$(sed -n 's/.*bytes all-reduced per step \([0-9]*\).*/\1/p' <<<"$output")
      fi
      rates+=("$(awk '{print $2}' <<<"$line")")
      load=$(uptime | sed 's/.*load average: //')
    done
    median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    echo "$name  ${ranks} rank(s) x ${threads} thread(s): median $median target tokens/s (runs: ${rates[*]})$( ((ranks > 1)) && echo ", $bytes bytes all-reduced per step"); $line; load $load"
  done
done
