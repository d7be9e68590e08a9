#!/usr/bin/env bash
# A full disk while qkv-train saves a checkpoint (see docs/hardening.md).
#
#   tests/crash/full_disk.sh [QKV_TRAIN]        (default: build/examples/qkv-train)
#
# Mounting a small tmpfs needs root, so the disk is "filled" with RLIMIT_FSIZE instead (ulimit
# -f, with SIGXFSZ ignored): every write past the limit then fails with EFBIG, through the same
# write() error path as ENOSPC. A first run trains one epoch and checkpoints normally; a
# resumed run under a limit smaller than the weights file must fail with one clear line naming
# the file, and leave the first checkpoint loadable at its step.
set -euo pipefail

train=${1:-build/examples/qkv-train}
[[ -x "$train" ]] || { echo "full disk test: $train is not built" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$work/run
fail() {
  echo "full disk test: FAILED: $*" >&2
  exit 1
}
source "$(dirname "$0")/common.sh"

"$train" --model bahdanau --task reverse --train-size 64 --eval-size 8 --batch 16 --embed 16 --hidden 16 \
  --layers 1 --epochs 1 --out "$dir" --threads 1 >"$work/first.out" 2>&1 || true
[[ -f "$dir/config.json" ]] || fail "the first run wrote no checkpoint: $(tail -3 "$work/first.out")"
step=$(saved_step "$dir")
weights=$(stat -c %s "$dir/model.safetensors")
cp "$dir/model.safetensors" "$work/weights.before"

# ulimit -f counts 1024-byte blocks: half the weights file fits, the rest does not.
status=0
(trap '' XFSZ; ulimit -f $((weights / 2048)); exec "$train" --resume "$dir" --epochs 2 --threads 1) \
  >"$work/full.out" 2>&1 || status=$?
((status != 0)) || fail "qkv-train succeeded although its files cannot be written"
grep -q "File too large" "$work/full.out" || fail "no clear error: $(tail -3 "$work/full.out")"
[[ $(saved_step "$dir") == "$step" ]] || fail "config.json moved from step $step"
cmp -s "$dir/model.safetensors" "$work/weights.before" || fail "model.safetensors changed"
check_loads "$dir"
echo "full disk test: exit status $status, \"$(grep -m1 'File too large' "$work/full.out")\";" \
  "the step-$step checkpoint was left as it was, and --resume loaded it and trained on to step $(saved_step "$dir")"
