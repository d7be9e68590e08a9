# Shared by the crash tests in this folder. Expects $train (qkv-train), $work (a scratch
# directory) and a fail function.

# The progress step in config.json (its objects are dumped with sorted keys, two-space indent).
saved_step() { sed -n '/"progress": {/,/}/s/.*"step": \([0-9]*\).*/\1/p' "$1/config.json"; }
saved_epoch() { sed -n '/"progress": {/,/}/s/.*"epoch": \([0-9]*\).*/\1/p' "$1/config.json"; }

# Resumes the checkpoint in $1 and, once it is training, interrupts it with SIGINT, on which
# qkv-train saves a checkpoint and exits with status 130 ("interrupted: checkpoint saved").
# SIGINT is sent only once qkv-train itself (not the shell that forks it) catches it, read off
# /proc/PID, so a slow load is not mistaken for a failed one.
check_loads() {
  "$train" --resume "$1" --epochs 100000 --threads 1 >"$work/check.out" 2>&1 &
  local pid=$! status=0 waited=0
  while kill -0 "$pid" 2>/dev/null; do
    if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */qkv-train ]] &&
       (( 0x$(sed -n 's/^SigCgt:\s*//p' "/proc/$pid/status" 2>/dev/null || echo 0) & 2 )); then
      kill -INT "$pid" 2>/dev/null || true
    fi
    sleep 0.05
    (( ++waited < 600 )) || { kill -KILL "$pid"; fail "--resume $1 did not stop on SIGINT within 30 s"; }
  done
  wait "$pid" || status=$?
  ((status == 130)) && grep -q "interrupted: checkpoint saved" "$work/check.out" ||
    fail "--resume $1 did not load and continue (exit $status): $(tail -3 "$work/check.out")"
}

