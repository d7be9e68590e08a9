#!/usr/bin/env bash
# Crash safety of qkv-train's checkpoints under SIGKILL (see docs/hardening.md).
#
#   tests/crash/kill_resume.sh [TRIALS] [QKV_TRAIN]     (defaults: 50, build/examples/qkv-train)
#
# A tiny Bahdanau model trains with epochs of one step, so much of its time goes to evaluating and
# writing checkpoints (model, optimizer, config.json, metrics.jsonl, best/). Each trial starts
# qkv-train — fresh while no checkpoint exists, else `--resume DIR` — and SIGKILLs it: odd
# trials after a random 0.1-1.5 s, even trials just after it starts writing a checkpoint file
# (plus a random few microseconds). After every kill:
#   - if a checkpoint had been written before, DIR/config.json must still exist;
#   - its step must not have gone back;
#   - `qkv-train --resume DIR` (and --resume DIR/best) must load it and train on, until a SIGINT
#     makes it save and exit as it should.
# A trial counts as "killed during a checkpoint write" when files written during it are left
# in DIR/.staging or as *.tmp.* temporaries. After the trials, one resume trains two more
# epochs and must end with its `final:` line. Exits non-zero on the first failure, with what
# failed.
set -euo pipefail

trials=${1:-50}
train=${2:-build/examples/qkv-train}
[[ -x "$train" ]] || { echo "kill test: $train is not built" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$work/run
model=(--model bahdanau --task reverse --train-size 16 --eval-size 4 --batch 16 --embed 16 --hidden 16
       --layers 1 --seed 1)

fail() {
  echo "kill test: FAILED at trial $trial: $*" >&2
  exit 1
}

source "$(dirname "$0")/common.sh"

last_step=-1
during_write=0
loaded=0
start=$SECONDS
for ((trial = 1; trial <= trials; trial++)); do
  touch "$work/stamp"
  sleep 0.01  # file times have a granularity; files written after this are newer than the stamp
  if [[ -f "$dir/config.json" ]]; then
    "$train" --resume "$dir" --epochs 100000 --threads 1 >"$work/trial.out" 2>&1 &
  else
    "$train" "${model[@]}" --epochs 100000 --out "$dir" --threads 1 >"$work/trial.out" 2>&1 &
  fi
  pid=$!
  if ((trial % 2)); then
    # Odd trials: a random moment.
    sleep "$(printf '0.%03d' $((100 + RANDOM % 900)))"
    ((RANDOM % 2)) && sleep 0.5
  else
    # Even trials: aimed at a checkpoint write. lib/atomic_file names its temporary files
    # NAME.tmp.PID, so a glob (no fork, microseconds) sees this process start writing one;
    # a random number of further polls spreads the kills over the save's files and renames.
    shopt -s nullglob
    polls=0 extra=$((RANDOM % 40))
    while kill -0 "$pid" 2>/dev/null && ((polls < 2000000)); do
      writing=("$dir"/.staging/*.tmp."$pid" "$dir"/*.tmp."$pid" "$dir"/best/.staging/*.tmp."$pid")
      ((${#writing[@]} > 0)) && break
      ((++polls))
    done
    for ((i = 0; i < extra; i++)); do [[ -e /proc/$pid ]]; done
    shopt -u nullglob
  fi
  kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; fail "qkv-train exited on its own: $(tail -3 "$work/trial.out")"; }
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null || true

  if [[ -n "$(find "$dir" -newer "$work/stamp" \( -path '*/.staging/*' -o -name '*.tmp.*' \) -type f 2>/dev/null)" ]]; then
    ((++during_write))
  fi
  if [[ ! -f "$dir/config.json" ]]; then
    ((last_step < 0)) || fail "the checkpoint of step $last_step is gone"
    continue
  fi
  step=$(saved_step "$dir")
  ((step >= last_step)) || fail "the checkpoint went back from step $last_step to $step"
  check_loads "$dir"
  [[ -f "$dir/best/config.json" ]] && check_loads "$dir/best"
  ((++loaded))
  last_step=$step
done

epoch=$(saved_epoch "$dir")
"$train" --resume "$dir" --epochs $((epoch + 2)) --threads 1 >"$work/final.out" 2>&1 ||
  fail "the final --resume failed: $(tail -3 "$work/final.out")"
grep -q '^final: ' "$work/final.out" || fail "the final --resume printed no final line"
echo "kill test: $trials SIGKILLs in $((SECONDS - start)) s, $during_write during a checkpoint write;" \
  "after $loaded of them a checkpoint existed and --resume loaded it and trained on until a SIGINT;" \
  "last step $last_step, then resumed 2 more epochs to step $(saved_step "$dir"): $(grep '^final: ' "$work/final.out")"
