"""Store opening while another process holds the file: wait, then a clear error."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from graph.errors import StoreBusy
from graph.store import Store
from tests.conftest import REPO

HOLD = """
import sys, time
from graph.store import Store
with Store(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold(path, seconds: float) -> subprocess.Popen:
    """Another process with the store open read-write for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_opening_waits_for_the_other_process_then_succeeds(tmp_path):
    db = tmp_path / "g.duckdb"
    Store(db).close()
    other = hold(db, 1.0)
    start = time.monotonic()
    with Store(db, wait=30) as store:                 # waits out the holder's second
        assert store.scalar("SELECT count(*) FROM cyberlinks") == 0
    assert time.monotonic() - start > 0.3
    other.wait(timeout=30)


def test_a_store_held_too_long_is_a_clear_error(tmp_path):
    db = tmp_path / "g.duckdb"
    Store(db).close()
    other = hold(db, 30)
    try:
        for read_only in (False, True):
            with pytest.raises(StoreBusy, match=rf"{db.name}: another process holds the store "
                                                rf"\(.*PID {other.pid}\).*waited 0.2 s"):
                Store(db, read_only=read_only, wait=0.2)
    finally:
        other.kill()
        other.wait()
