#!/bin/bash
# Two genlab experiments side by side under `dvc queue start -j 2`, against one alone (-j 1).
#
#   bash bench/queue_pair.sh                          # the default experiment (vae)
#   bash bench/queue_pair.sh -S model.family=gan      # any -S overrides, given to every experiment
#
# In a fresh clone of HEAD (under a temporary folder): queue `-S seed=1`, start one worker and time it; then
# queue `-S seed=2` and `-S seed=3`, start two workers and time until both are done. Each seed changes the
# split, so every stage reruns in every experiment. Waiting polls the worker processes with pgrep: polling
# `dvc queue status` costs about a core-second a call, enough to slow the runs it measures.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d -t genlab-queue-XXXX)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$repo" "$tmp/repo" && cd "$tmp/repo"
export PATH="$repo/.venv/bin:$PATH" PYTHONPATH="$tmp/repo/src"
unset MLFLOW_TRACKING_URI
finish() {  # until a queue worker has started and every experiment it runs has ended
  for _ in $(seq 100); do pgrep -f exec-run > /dev/null && break; sleep 0.2; done
  while pgrep -f "exp queue-worker" > /dev/null || pgrep -f exec-run > /dev/null; do sleep 1; done
}
dvc exp run --queue -q -S seed=1 "$@"
t0=$(date +%s.%N); dvc queue start -j 1 -q; finish; t1=$(date +%s.%N)
dvc exp run --queue -q -S seed=2 "$@"
dvc exp run --queue -q -S seed=3 "$@"
t2=$(date +%s.%N); dvc queue start -j 2 -q; finish; t3=$(date +%s.%N)
dvc queue status
python3 -c "a, b = $t1 - $t0, $t3 - $t2; print(f'one alone (-j 1): {a:.0f} s; two side by side (-j 2): {b:.0f} s for both = {b / a:.2f}x (fair share: <= 1.5x on 2 cores)')"
