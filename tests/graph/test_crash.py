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
    killed_mid_write = 0
    for delay in (0.0, 0.2, 0.5):
        proc = subprocess.Popen([sys.executable, "-m", "loop.cli", "--db", str(db), "ingest",
                                 "links", str(big)], stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # wait until the write transaction is under way
            if "writing" in line:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        with Store(db) as store:
            after = table_counts(store)
        if rc == -signal.SIGKILL:
            killed_mid_write += 1
            assert after == before, f"killed after {delay}s: store changed"
        else:  # it finished before the signal: then it must be whole
            assert after["cyberlinks"] == before["cyberlinks"] + 300_000
            break
    assert killed_mid_write, "the kill never landed during the write"
    if rc != -signal.SIGKILL:
        return
    with Store(db) as store:  # the store still works, and the same file now goes in whole
        [result] = ingest_links(store, [big])
        assert result.rows == 300_000
        assert store.scalar("SELECT count(*) FROM cyberlinks") == before["cyberlinks"] + 300_000
