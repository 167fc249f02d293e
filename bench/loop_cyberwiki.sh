#!/usr/bin/env bash
# The loop on cyberwiki: a seeded 10% split of its `link` rows is held out, the rest and the
# particles are ingested, the baselines are evaluated once (they only read ingest links), and
# `graft cycle` runs N cycles with per-cycle eval against the holdout; the last step prints
# the cycles and the per-cycle eval table beside the baselines (bench/loop_table.py).
# Usage: bash bench/loop_cyberwiki.sh [WORKDIR] [CYCLES] [AUTO_ACCEPT] [SPLIT_SEED]   (needs ../shared)
#   AUTO_ACCEPT 0: accept by calibrated confidence instead (--accept-precision, default 0.8)
#   CYCLE_ARGS (env): more `graft cycle` flags, e.g. "--folds 3"
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/graft-loop-cyberwiki}; N=${2:-3}; K=${3:-50}; SEED=${4:-1}
CW=../shared/data/cyberwiki
rm -rf "$W"; mkdir -p "$W"
graft split-holdout "$CW/train_links.jsonl" --fraction 0.1 --seed "$SEED" --token link \
      --train "$W/train.jsonl" --holdout "$W/holdout.jsonl"
graft --db "$W/g.duckdb" ingest particles "$CW/particles.jsonl"
graft --db "$W/g.duckdb" ingest links "$W/train.jsonl"
graft --db "$W/g.duckdb" eval --holdout "$W/holdout.jsonl" --json \
      --methods popularity,focus,adamic_adar,ppmi,spectral,mentions,pykeen > "$W/baselines.json"
graft --db "$W/g.duckdb" cycle --cycles "$N" --corpus "$CW/corpus.txt" --out "$W/out" \
      --holdout "$W/holdout.jsonl" --auto-accept "$K" --max-steps 150 --top-k 500 \
      ${CYCLE_ARGS:-} | tee "$W/cycles.txt"
python bench/loop_table.py --db "$W/g.duckdb" --baselines "$W/baselines.json" | tee "$W/table.md"
