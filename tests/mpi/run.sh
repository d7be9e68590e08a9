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
#                process (cmp; the CSV seconds column and the summary's Time and Command lines,
#                which hold wall times and --out, are removed first)
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
  # The sections that the ranks share (mup and stability run on rank 0 alone).
  args=(--quick --sections statistics training --trials 2000 --gradient-trials 100 --prediction-samples 500 --d-model 32 --train-key-sizes 16 32
        --steps 6 --probe-every 3 --jobs 1)
  "$study" "${args[@]}" --out "$work/one" >"$work/one.txt" 2>&1 || fail "one process: $(tail -3 "$work/one.txt")"
  "${mpirun[@]}" -np 2 "$study" "${args[@]}" --out "$work/two" >"$work/two.txt" 2>&1 ||
    fail "2 ranks: $(tail -3 "$work/two.txt")"
  grep -m1 "runs over 2 processes" "$work/two.txt" || fail "the sweep was not spread over the ranks"
  # Wall-clock times are the only thing allowed to differ: drop the CSV's seconds column and the
  # summary's Time line, then every file must be identical.
  for dir in one two; do
    mkdir -p "$work/$dir-cmp"
    for file in "$work/$dir"/*.csv "$work/$dir"/*.md; do
      name=$(basename "$file")
      case $name in
        summary.md) grep -v '^Time: \|^Command: ' "$file" >"$work/$dir-cmp/$name" ;;
        *.csv) awk -F, -v OFS=, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "seconds") s = i }
                                 { if (s) { $s = "" } print }' "$file" >"$work/$dir-cmp/$name" ;;
        *) cp "$file" "$work/$dir-cmp/$name" ;;
      esac
    done
  done
  compared=0
  for file in "$work/one-cmp"/*; do
    cmp "$file" "$work/two-cmp/$(basename "$file")" || fail "$(basename "$file") differs"
    ((++compared))
  done
  for svg in "$work/one"/*.svg; do cmp "$svg" "$work/two/$(basename "$svg")" || fail "$(basename "$svg") differs"; ((++compared)); done
  echo "cmp: $compared files identical (the CSV seconds column and the summary's Time and Command lines removed)"
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "mpi $case_name: passed"
