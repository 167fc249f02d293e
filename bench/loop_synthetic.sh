#!/usr/bin/env bash
# One cycle on the Bostrom-scale synthetic graph (bench/synthetic_graph.py: 3,143,630
# particles, 2.7M links, generated pages for 100,000 of them, a seeded 10% of the pages'
# named links held out): generate, ingest, then `graft cycle` with per-cycle eval on a seeded
# sample of the held-out links (each ranked exactly among all 3.14M particles), under
# /usr/bin/time -v for the peak memory; the last step prints the cycle, its steps' seconds
# and the eval table (bench/loop_table.py). Everything is written under WORKDIR.
# Usage: bash bench/loop_synthetic.sh [WORKDIR] [EVAL_QUERIES] [PARTICLES]
#   CYCLE_ARGS (env): more `graft cycle` flags. Without the MiniLM features (--no-text-embed)
#   by default: their (P, 384) vectors are 4.8 GB at 3.14M particles.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/graft-loop-synthetic}; Q=${2:-1000}; P=${3:-3143630}
rm -rf "$W"; mkdir -p "$W"
python bench/synthetic_graph.py --out "$W/data" --particles "$P" | tee "$W/graph.json"
graft --db "$W/g.duckdb" ingest particles "$W/data/particles.jsonl"
graft --db "$W/g.duckdb" ingest links "$W/data/links.parquet"
time=(); [ -x /usr/bin/time ] && time=(/usr/bin/time -v -o "$W/time.txt")
"${time[@]}" graft --db "$W/g.duckdb" cycle --cycles 1 --out "$W/out" \
      --holdout "$W/data/holdout.jsonl" --eval-queries "$Q" --auto-accept 50 --max-steps 150 \
      --top-k 500 --d 130 --layers 2 ${CYCLE_ARGS:---no-text-embed} | tee "$W/cycles.txt"
[ -f "$W/time.txt" ] && grep -E "Elapsed|Maximum resident" "$W/time.txt"
python bench/loop_table.py --db "$W/g.duckdb" | tee "$W/table.md"
