"""A process killed (SIGKILL) in the middle of an ingest leaves the store as it was."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

from graph.ingest import ingest_links
from graph.store import Store
from tests.conftest import link, pid, table_counts, write_jsonl


def _big_file(path, n: int):
    rng = random.Random(7)
    ids = [pid(str(i)) for i in range(2000)]
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"neuron": "n", "from": rng.choice(ids), "to": rng.choice(ids),
                                 "token": "link", "amount": rng.randrange(1, 99),
                                 "valence": 1, "time": i}) + "\n")
    return path


def test_sigkill_during_ingest_leaves_store_unchanged(tmp_path):
    db = tmp_path / "crash.duckdb"
    with Store(db) as store:
        ingest_links(store, [write_jsonl(tmp_path / "seed.jsonl", [link("a", "b")])])
        before = table_counts(store)
    big = _big_file(tmp_path / "big.jsonl", 300_000)
    rolled_back = 0
    for delay in (0.0, 0.1, 0.3):
        proc = subprocess.Popen([sys.executable, "-m", "loop.cli", "--db", str(db), "ingest",
                                 "links", str(big)], stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # wait until the write transaction is under way
            if "writing" in line:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(db) as store:
            after = table_counts(store)
        if after == before:
            rolled_back += 1
            continue
        # The signal landed after COMMIT: then the batch must be there whole.
        assert after["cyberlinks"] == before["cyberlinks"] + 300_000
        assert after["batches"] == before["batches"] + 1
        break
    assert rolled_back, "the kill never landed inside the write transaction"
    with Store(db) as store:  # the store still works, and the file goes in whole (or was in)
        ingest_links(store, [big])
        assert store.scalar("SELECT count(*) FROM cyberlinks") == before["cyberlinks"] + 300_000
