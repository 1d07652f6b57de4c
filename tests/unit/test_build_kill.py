"""kill -9 during a build, again and again: every restart resumes, and in the end every user's personas are stored
exactly once (one version per user for the one configuration) and the SQLite file passes its integrity check."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from _jobs_data import jobs_dataset
from personalens.jobs import BuildConfig, PersonaXBuilder
from personalens.jobs.testing import DeterministicBackends
from personalens.selection import PersonaXSelector

backends = DeterministicBackends({store!r}, delay=0.01)
users = [f"u{{i}}" for i in range({n})]
with backends.open_store() as store:
    builder = PersonaXBuilder(backends.chat_model(), backends.embedder(),
                              PersonaXSelector(threshold_rule="n_clusters", threshold=3), store,
                              BuildConfig(max_words=40))
    report = builder.run(jobs_dataset({n}), users, run_id="killed")
print("FINISHED", report.count("built"), report.count("cached"), report.count("failed"))
"""

N_USERS = 12
TRIALS = 10


def test_sigkill_at_random_points_then_resume(tmp_path):
    store = tmp_path / "p.sqlite"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), store=str(store), n=N_USERS))
    rng = random.Random(8)
    killed = 0
    for _ in range(TRIALS):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 2.0))  # python start-up and imports take part of it: kills land anywhere
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "FINISHED" in done.stdout and done.stdout.split()[-1] == "0"  # nothing failed
    assert killed >= 1
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute(
        "SELECT user_id, config_hash, COUNT(*) FROM persona_sets GROUP BY user_id, config_hash"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(f"u{i}" for i in range(N_USERS))
    assert all(r[2] == 1 for r in rows), rows  # no duplicate version for the same configuration
    currents = dict(db.execute("SELECT user_id, current_version FROM users").fetchall())
    assert currents == {f"u{i}": 1 for i in range(N_USERS)}
    # every persona set is whole: the one per cluster that the build writes, each with its embedding
    for set_id, n in db.execute(
        "SELECT s.id, COUNT(p.set_id) FROM persona_sets s LEFT JOIN personas p ON p.set_id = s.id GROUP BY s.id"
    ):
        assert n == 3, (set_id, n)
    status = dict(db.execute("SELECT user_id, status FROM build_status WHERE run_id = 'killed'").fetchall())
    assert status == {f"u{i}": "done" for i in range(N_USERS)}
