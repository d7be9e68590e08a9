#!/usr/bin/env bash
# The attention explorer (train/attention_explorer.hpp) in a real browser, Debian's headless
# Chromium (/usr/bin/chromium, installed by scripts/setup.sh):
#   1. trains a tiny transformer and a tiny Bahdanau model on the reverse task (seconds each);
#      qkv-train writes each run's attention.html;
#   2. qkv-translate --explore writes the transformer's page for a sentence holding a <script>
#      token, with hand-made head importances (--head-importance);
#   3. installs puppeteer-core from the lock file (npm ci; it never downloads a browser) and
#      runs explorer.test.mjs over the pages with node's test runner, leaving screenshots in
#      OUT_DIR/screenshots/.
# Usage: tests/browser/run.sh BUILD_DIR [OUT_DIR]    (OUT_DIR defaults to BUILD_DIR/browser)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: tests/browser/run.sh BUILD_DIR [OUT_DIR]}" && pwd)
out=${2:-$build/browser}
rm -rf "$out"
mkdir -p "$out"

train() {  # MODEL OPTIONS...: a run directory $out/MODEL, its log beside it
  local model=$1
  shift
  if ! "$build/examples/qkv-train" --model "$model" --task reverse --train-size 256 --eval-size 16 --epochs 2 \
    --batch 32 --threads 1 --out "$out/$model" "$@" >"$out/$model.log" 2>&1; then
    cat "$out/$model.log" >&2
    exit 1
  fi
}
train transformer --layers 2 --heads 2 --d-model 16
train bahdanau --layers 1 --embed 8 --hidden 16

# Numbers a head-analysis program would write: 2 layers x 2 heads, two of the three groups.
cat >"$out/head_importance.json" <<'JSON'
{"cross-attention": [[0.9, 0.125], [0.25, 0.5]],
 "encoder self-attention": [[0.0625, 0.75], [0.375, 1]]}
JSON
# A source whose tokens are markup: the page must show them as text and run none of them.
printf 'a <script>window.pwned=1</script> b "q&amp;" c\n' |
  "$build/examples/qkv-translate" --checkpoint "$out/transformer" --explore "$out/translate.html" \
    --head-importance "$out/head_importance.json" >/dev/null

cd "$here"
# puppeteer-core never downloads a browser; the variable makes sure no dependency tries.
export PUPPETEER_SKIP_DOWNLOAD=1
npm ci --no-audit --no-fund --prefer-offline --loglevel=error
EXPLORER_PAGE="$out/translate.html" EXPLORER_TRAIN_PAGE="$out/transformer/attention.html" \
  EXPLORER_BAHDANAU_PAGE="$out/bahdanau/attention.html" EXPLORER_SCREENSHOTS="$out/screenshots" \
  node --test --test-reporter=spec explorer.test.mjs
