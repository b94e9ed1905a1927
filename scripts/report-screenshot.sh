#!/usr/bin/env bash
# Render an evaluation report (medrl eval compare) in headless Chromium and save a PNG.
# Fails when Chromium reports a console error or an uncaught exception (the report has no
# script, so any such line means broken markup or a resource it must not load).
#
#   scripts/report-screenshot.sh REPORT.html OUT.png [WIDTHxHEIGHT]   (default 1280x2000)
#
# Installs Chromium from the Debian packages when it is missing (apt-get, as root or with sudo),
# unless MEDRL_NO_INSTALL=1.
set -euo pipefail

html=${1:?usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]}
png=${2:?usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]}
size=${3:-1280x2000}
[[ -f $html ]] || { echo "no such file: $html" >&2; exit 2; }

find_browser() {
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then echo "$b"; return 0; fi
  done
  return 1
}

if ! browser=$(find_browser); then
  if [[ ${MEDRL_NO_INSTALL:-0} == 1 ]]; then
    echo "chromium not installed (and MEDRL_NO_INSTALL=1)" >&2
    exit 3
  fi
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $sudo apt-get update -q
  fi
  apt-cache policy chromium | grep -q 'Candidate: [0-9]' || { echo "no chromium package in the configured apt sources" >&2; exit 3; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
  browser=$(find_browser)
fi

abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
mkdir -p "$(dirname "$png")"
abs_png=$(cd "$(dirname "$png")" && pwd)/$(basename "$png")
log=$(mktemp)
profile=$(mktemp -d)
trap 'rm -rf "$log" "$profile"' EXIT

# --virtual-time-budget lets layout settle; a fresh profile keeps runs independent.
timeout 120 "$browser" --headless --disable-gpu --no-sandbox --no-first-run --no-default-browser-check \
  --user-data-dir="$profile" --hide-scrollbars --enable-logging=stderr --v=0 \
  --virtual-time-budget=2000 --window-size="${size/x/,}" --screenshot="$abs_png" "file://$abs_html" 2>"$log" || {
  cat "$log" >&2
  echo "chromium failed" >&2
  exit 1
}

if grep -E 'Uncaught|ERROR:CONSOLE|CONSOLE\(|net::ERR_' "$log" >&2; then
  echo "console errors while rendering $html (lines above)" >&2
  exit 1
fi
[[ -s $abs_png ]] || { cat "$log" >&2; echo "no screenshot written" >&2; exit 1; }
echo "wrote $abs_png ($(wc -c <"$abs_png") bytes) with $($browser --version 2>/dev/null | head -1)"
