#!/usr/bin/env bash
# Serves a run's TensorBoard directory locally and screenshots a dashboard
# with headless Chromium, as the README's pictures were taken.
#
#   scripts/tensorboard-screenshot.sh runs/smoke docs/tensorboard-smoke.png [DASHBOARD]
#
# DASHBOARD: the part after '#' in TensorBoard's URL (default: scalars).
# Needs `pip install tensorboard` and a Chromium (`apt-get install chromium`).
set -euo pipefail
run=${1:?run directory}
out=${2:?output .png}
dashboard=${3:-scalars}
port=${PORT:-6123}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome)
tensorboard --logdir "$run/tensorboard" --port "$port" --host 127.0.0.1 >/dev/null 2>&1 &
tb=$!
trap 'kill $tb' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/" >/dev/null && break
  sleep 1
done
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1400,1000 --virtual-time-budget=15000 \
  --screenshot="$out" "http://127.0.0.1:$port/#$dashboard" 2>/dev/null
echo "wrote $out"
