#!/usr/bin/env bash
# Multi-rank tests of qkv's data parallelism (docs/distributed.md), one per subcommand:
#
#   tests/mpi/run.sh CASE WORK_DIR DATA_PARALLEL_CHECK DATA_PARALLEL_CHECK_F64 QKV_TRAIN QKV_SCALING_STUDY
#
#   loss_curves  QKV_MPI_STEPS (default 30) steps of each model (dropout 0.1) alone and on 2 ranks with the same global
#                batch, in float64 (the losses must agree to 1e-12 relative: only summation
#                order differs) and float32 (printed; bound 1e-2, as rounding grows in training)
#   handshake    a rank started with another --lr is refused at start-up, naming options.lr
#   hash_check   a weight nudged on rank 1 stops both ranks at the next evaluation, naming it
#   kill_resume  SIGKILL of rank 1 mid-run: mpirun ends the job within 20 s with a message, the
#                last checkpoint loads, and --resume continues it on 2 ranks and then on 1
#   sweep        mpirun -np 2 qkv-scaling-study writes the same CSV rows and summary as one
#                process (cmp; the CSV seconds column and the summaries' Time and Command lines,
#                which hold wall times and --out, are removed first)
#   sections     the same for the mup, stability, length and additive sections (--smoke sizes),
#                2 ranks with --jobs 1 and with --jobs 2 (threads inside each rank), and every
#                CSV of runs has one row per run of the grid (none dropped, none twice)
#
# Prints "mpi CASE: passed" last on success (ctest looks for it); exits non-zero with what failed.
set -euo pipefail

case_name=$1 work=$2 check=$3 check64=$4 train=$5 study=$6
rm -rf "$work" && mkdir -p "$work"
# Open MPI refuses root without these; CI and this machine run as root.
if [[ $EUID -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# Two ranks on a machine that may have fewer free cores: oversubscribe, and let idle ranks yield.
mpirun=(mpirun --oversubscribe --mca mpi_yield_when_idle 1)

fail() {
  echo "mpi $case_name: FAILED: $*" >&2
  exit 1
}

# Runs qkv-scaling-study alone into $work/one and under mpirun -np 2 into $work/two-$jobs for
# each --jobs value after "--", with the study's arguments before it.
run_study() {
  local args=() jobs_values=() seen=0
  for a in "$@"; do
    if [[ $a == -- ]]; then seen=1; elif ((seen)); then jobs_values+=("$a"); else args+=("$a"); fi
  done
  "$study" "${args[@]}" --jobs 1 --out "$work/one" >"$work/one.txt" 2>&1 || fail "one process: $(tail -3 "$work/one.txt")"
  for jobs in "${jobs_values[@]}"; do
    "${mpirun[@]}" -np 2 "$study" "${args[@]}" --jobs "$jobs" --out "$work/two-$jobs" >"$work/two-$jobs.txt" 2>&1 ||
      fail "2 ranks, --jobs $jobs: $(tail -3 "$work/two-$jobs.txt")"
  done
}

# Every file of $work/one against $work/$2 (cmp), wall-clock times removed first: the CSVs'
# seconds column and the summaries' Time and Command lines. Prints what it compared.
compare_with_one_process() {
  local other=$1
  for dir in one "$other"; do
    rm -rf "$work/$dir-cmp" && mkdir -p "$work/$dir-cmp"
    for file in "$work/$dir"/*.csv "$work/$dir"/*.md; do
      name=$(basename "$file")
      case $name in
        *.md) grep -v '^Time: \|^Command: ' "$file" >"$work/$dir-cmp/$name" ;;
        *.csv) awk -F, -v OFS=, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "seconds") s = i }
                                 { if (s) { $s = "" } print }' "$file" >"$work/$dir-cmp/$name" ;;
      esac
    done
  done
  local compared=0
  [[ $(ls "$work/one-cmp" | wc -l) == $(ls "$work/$other-cmp" | wc -l) ]] || fail "$other: not the same files as one process"
  for file in "$work/one-cmp"/*; do
    cmp "$file" "$work/$other-cmp/$(basename "$file")" || fail "$other: $(basename "$file") differs"
    ((++compared))
  done
  for svg in "$work/one"/*.svg; do
    cmp "$svg" "$work/$other/$(basename "$svg")" || fail "$other: $(basename "$svg") differs"
    ((++compared))
  done
  echo "$other: $compared files identical to one process' (the CSV seconds column and the summaries' Time and Command lines removed)"
}

# expect_rows DIR FILE.csv COUNT: COUNT rows besides the header, and no row twice.
expect_rows() {
  local file=$work/$1/$2 rows
  rows=$(($(wc -l <"$file") - 1))
  ((rows == $3)) || fail "$1/$2: $rows rows, expected $3"
  [[ -z $(tail -n +2 "$file" | sort | uniq -d) ]] || fail "$1/$2: a row appears twice"
}

# The largest relative difference between two "step N loss X" listings (same steps required).
max_relative_difference() {
  paste -d' ' <(grep '^step ' "$1") <(grep '^step ' "$2") | awk '
    $2 != $6 { bad = 1 }
    { d = $4 - $8; if (d < 0) d = -d; r = d / ($4 < 0 ? -$4 : $4); if (r > m) { m = r; at = $2 } n++ }
    END { if (bad || n == 0) { print "mismatched"; exit } printf "%.3g at step %d of %d\n", m, at, n }'
}

case $case_name in
loss_curves)
  # QKV_MPI_STEPS=200 for the figures in docs/distributed.md; ctest runs 30 to stay quick.
  steps=${QKV_MPI_STEPS:-30}
  # float64 first: there the curves must agree to ~1e-15 (dropout masks, sharding and the loss
  # normalisation exact); float32's difference is then rounding, amplified by training.
  for model in transformer bahdanau; do
    for precision in f64 f32; do
      program=$check
      [[ $precision == f64 ]] && program=$check64
      "$program" --model "$model" --steps "$steps" --dropout 0.1 --threads 1 >"$work/$model-$precision-1.txt"
      "${mpirun[@]}" -np 2 "$program" --model "$model" --steps "$steps" --dropout 0.1 --threads 1 \
        >"$work/$model-$precision-2.txt"
      difference=$(max_relative_difference "$work/$model-$precision-1.txt" "$work/$model-$precision-2.txt")
      echo "$model $precision, $(head -1 "$work/$model-$precision-2.txt" | cut -d, -f1-2)"
      echo "  largest relative loss difference over $steps steps, 1 process vs 2 ranks: $difference"
      printf '    %-36s %-36s\n' "1 process" "2 ranks"
      shown="2p;3p;$((steps / 4 + 1))p;$((steps / 2 + 1))p;$((3 * steps / 4 + 1))p;$((steps + 1))p"
      paste -d'|' <(sed -n "$shown" "$work/$model-$precision-1.txt") <(sed -n "$shown" "$work/$model-$precision-2.txt") |
        awk -F'|' '{ printf "    %-36s %-36s\n", $1, $2 }'
      [[ $difference != mismatched ]] || fail "$model $precision: the step listings differ"
      bound=1e-12
      [[ $precision == f32 ]] && bound=1e-2
      awk -v d="${difference%% *}" -v b="$bound" 'BEGIN { exit !(d < b) }' ||
        fail "$model $precision: relative difference $difference, more than $bound"
    done
  done
  ;;
handshake)
  # MPMD: rank 0 with --lr 0.001, rank 1 with --lr 0.002; both must stop at once, naming it.
  common=(--model transformer --task reverse --train-size 64 --eval-size 8 --epochs 1 --batch 16 --threads 1
          --out "$work/run")
  status=0
  timeout 30 "${mpirun[@]}" -np 1 "$train" "${common[@]}" --lr 0.001 : -np 1 "$train" "${common[@]}" --lr 0.002 \
    >"$work/out.txt" 2>&1 || status=$?
  grep -E "not started alike" "$work/out.txt" | head -1
  grep -E "options\.lr: 0\.002 on rank 1, 0\.001 on rank 0" "$work/out.txt" | head -1 ||
    fail "no message naming options.lr (exit $status): $(tail -5 "$work/out.txt")"
  ((status != 0 && status != 124)) || fail "exit status $status"
  ;;
hash_check)
  status=0
  timeout 30 "${mpirun[@]}" -np 2 "$check" --model transformer --steps 5 --perturb-rank 1 >"$work/out.txt" 2>&1 ||
    status=$?
  grep -m1 "parameters differ" "$work/out.txt" || fail "no hash-check error (exit $status): $(tail -5 "$work/out.txt")"
  grep -q "parameters differ between the processes: '[^']*' (the first tensor that differs) on rank 1" "$work/out.txt" ||
    fail "the message does not name the tensor and the rank"
  ((status != 0 && status != 124)) || fail "exit status $status"
  ;;
kill_resume)
  dir=$work/run
  "${mpirun[@]}" -np 2 "$train" --model bahdanau --task reverse --train-size 64 --eval-size 8 --batch 16 --embed 16 \
    --hidden 16 --layers 1 --epochs 100000 --threads 1 --out "$dir" >"$work/run.txt" 2>&1 &
  launcher=$!
  for ((i = 0; i < 300; i++)); do [[ -f $dir/config.json ]] && break; sleep 0.1; done
  [[ -f $dir/config.json ]] || fail "no checkpoint within 30 s: $(tail -5 "$work/run.txt")"
  sleep 1
  # Rank 1: the qkv-train child of mpirun whose OMPI_COMM_WORLD_RANK is 1.
  victim=
  for pid in $(pgrep -P "$(pgrep -P "$launcher" -x mpirun || echo "$launcher")" -x qkv-train || true) \
             $(pgrep -x qkv-train || true); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" &&
       tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$dir"; then victim=$pid; break; fi
  done
  [[ -n $victim ]] || fail "rank 1 not found"
  killed_at=$SECONDS
  kill -KILL "$victim"
  status=0
  for ((i = 0; i < 200; i++)); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$launcher" 2>/dev/null; then kill -KILL "$launcher"; fail "mpirun still running 20 s after the kill"; fi
  wait "$launcher" || status=$?
  echo "mpirun exited with status $status $((SECONDS - killed_at)) s after rank 1 was killed; its message:"
  grep -iE "signal 9|killed|exited on signal" "$work/run.txt" | head -3 || fail "no message about the killed rank"
  ((status != 0)) || fail "mpirun exited 0"
  saved() { sed -n '/"progress": {/,/}/s/.*"'"$1"'": \([0-9]*\).*/\1/p' "$dir/config.json"; }
  step=$(saved step) epoch=$(saved epoch)
  echo "last checkpoint: epoch $epoch, step $step"
  # The lock was rank 0's; it died with it, so the directory is free again. Two more epochs on
  # 2 ranks, then one more alone (a different N).
  "${mpirun[@]}" -np 2 "$train" --resume "$dir" --epochs $((epoch + 2)) --threads 1 >"$work/resume2.txt" 2>&1 ||
    fail "--resume on 2 ranks: $(tail -5 "$work/resume2.txt")"
  grep -m1 "^final:" "$work/resume2.txt" >/dev/null || fail "--resume on 2 ranks did not finish"
  step2=$(saved step)
  ((step2 > step)) || fail "--resume on 2 ranks did not train (step $step2)"
  "$train" --resume "$dir" --epochs $((epoch + 3)) --threads 1 >"$work/resume1.txt" 2>&1 ||
    fail "--resume alone: $(tail -5 "$work/resume1.txt")"
  step1=$(saved step)
  ((step1 > step2)) || fail "--resume alone did not train (step $step1)"
  echo "resumed: step $step -> $step2 on 2 ranks -> $step1 alone; $(grep '^final:' "$work/resume1.txt")"
  ;;
sweep)
  run_study --sections statistics,training --quick --trials 2000 --gradient-trials 100 --prediction-samples 500 \
    --d-model 32 --train-key-sizes 16 32 --steps 6 --probe-every 3 -- 1
  grep -m1 "runs over 2 processes" "$work/two-1.txt" || fail "the sweep was not spread over the ranks"
  compare_with_one_process two-1
  # 2 key sizes x 4 scalings x 1 seed.
  expect_rows one training_runs.csv 8
  expect_rows two-1 training_runs.csv 8
  ;;
sections)
  run_study --sections mup,stability,length,additive --smoke -- 1 2
  for jobs in 1 2; do
    spread=$(grep -c "runs over 2 processes" "$work/two-$jobs.txt" || true)
    ((spread == 4)) || fail "--jobs $jobs: $spread of the 4 sections said they spread their runs over the ranks"
    compare_with_one_process "two-$jobs"
  done
  # The --smoke grids (examples/scaling_study/main.cpp): mup 2 widths x 3 parametrisations (1/√d, μP attention, full μP) x 3
  # learning rates; stability 3 fixes x 2 learning rates; length 2 tasks x 5 position schemes x
  # 3 scales x 2 test lengths; additive 2 d_k x 3 mechanisms x 3 probes (steps 0, 1, 2).
  for dir in one two-1 two-2; do
    expect_rows $dir mup_lr_transfer.csv 18
    expect_rows $dir stability_runs.csv 6
    expect_rows $dir length_generalisation.csv 60
    expect_rows $dir additive_curves.csv 18
  done
  echo "rows: mup_lr_transfer 18, stability_runs 6, length_generalisation 60, additive_curves 18, none twice"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "mpi $case_name: passed"
