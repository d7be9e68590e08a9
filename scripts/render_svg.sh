#!/usr/bin/env bash
# Renders an SVG to PNG with headless Chromium, to look at a plot as a reader will see it.
#   scripts/render_svg.sh IN.svg OUT.png [WIDTH HEIGHT]
# The window defaults to the SVG's own width and height (from its root element), else 900x700.
# Needs Debian's chromium (apt-get install -y chromium); the test suite does not.
set -euo pipefail

if (($# < 2 || $# > 4)); then
  echo "usage: $0 IN.svg OUT.png [WIDTH HEIGHT]" >&2
  exit 2
fi
input=$1
output=$2
[[ -f "$input" ]] || { echo "render_svg: $input: no such file" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
[[ -n "$browser" ]] || { echo "render_svg: chromium not found (apt-get install -y chromium)" >&2; exit 1; }

width=${3:-}
height=${4:-}
if [[ -z "$width" ]]; then
  # qkv's SVGs state integer pixel sizes on the root: <svg ... width="W" height="H" ...>
  root=$(grep -m1 -o '<svg [^>]*>' "$input" || true)
  width=$(sed -n 's/.* width="\([0-9]\+\)".*/\1/p' <<<"$root")
  height=$(sed -n 's/.* height="\([0-9]\+\)".*/\1/p' <<<"$root")
  width=${width:-900}
  height=${height:-700}
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
absolute_input=$(realpath "$input")
absolute_output=$(realpath -m "$output")
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$absolute_output" --window-size="$width,$height" \
  "file://$absolute_input" >/dev/null 2>&1
[[ -s "$absolute_output" ]] || { echo "render_svg: chromium wrote no image for $input" >&2; exit 1; }
echo "$output (${width}x${height})"
