"""SlurmCluster against fake sbatch/squeue/scancel programs: the cases a real Slurm cannot
stage on demand (a refused submission, a job that stays pending)."""

import logging
import os
import sys
import textwrap

import pytest

from hyperloom import SlurmCluster
from hyperloom.client import tasks
from hyperloom.cluster import adaptive
from hyperloom.cluster.adapt import Adaptor, AdaptPolicy

from ..conftest import wait_until

FAKE = {
    "sbatch": """
        calls("sbatch")
        if open(state("mode")).read().strip() == "refuse":
            sys.exit("sbatch: error: QOSMaxSubmitJobPerUserLimit")
        script = open(sys.argv[-1]).read()
        name = script.split("--job-name=")[1].split()[0]
        number = len(open(state("calls")).read().split("sbatch")) + 100
        with open(state("jobs"), "a") as f:
            f.write(f"{number}|PENDING|{name}|\\n")
        print(f"{number};fakecluster")
    """,
    "squeue": """
        calls("squeue")
        name = sys.argv[sys.argv.index("-n") + 1]
        for line in open(state("jobs")):
            if line.split("|")[2] == name:
                print(line, end="")
    """,
    "scancel": """
        calls("scancel " + " ".join(sys.argv[1:]))
        lines = [l for l in open(state("jobs")) if l.split("|")[0] not in sys.argv[1:]]
        open(state("jobs"), "w").writelines(lines)
    """,
}

PREAMBLE = """\
import os, sys
def state(name):
    return os.path.join(os.environ["FAKE_BATCH_DIR"], name)
def calls(what):
    with open(state("calls"), "a") as f:
        f.write(what + "\\n")
"""


@pytest.fixture
def fake_batch(tmp_path, monkeypatch):
    """Fake programs first on PATH; returns a helper to set the mode and read the calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{PREAMBLE}{textwrap.dedent(body)}")
        path.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    for name in ("calls", "jobs"):
        (state / name).write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_BATCH_DIR", str(state))

    class Fake:
        def mode(self, value):
            (state / "mode").write_text(value)

        def calls(self, prefix):
            return [c for c in (state / "calls").read_text().splitlines()
                    if c.startswith(prefix)]

        def jobs(self):
            return (state / "jobs").read_text().splitlines()
    return Fake()


def backlog(ready):
    return {"tasks": {"ready": ready, "assigned": 0}, "unplaceable": []}


def test_refused_submission_backs_off_with_a_log_line(fake_batch, tmp_path, caplog):
    fake_batch.mode("refuse")
    policy = AdaptPolicy(minimum=0, maximum=3, interval=1, shrink=adaptive.Shrink(60),
                         backoff_first=5, backoff_max=8)
    with SlurmCluster(cpus=1, log_directory=str(tmp_path / "logs")) as cluster:
        adaptor = Adaptor(cluster, policy)   # driven by hand, with made-up clock readings
        with caplog.at_level(logging.WARNING, logger="hyperloom.cluster"):
            for now in (0, 1, 4.9):       # one try, then quiet for 5 s
                adaptor.once(backlog(10), now)
            assert len(fake_batch.calls("sbatch")) == 1
            for now in (5, 6, 12.9):      # second try, then quiet for 8 s (the maximum)
                adaptor.once(backlog(10), now)
            assert len(fake_batch.calls("sbatch")) == 2
            adaptor.once(backlog(10), 13)
            assert len(fake_batch.calls("sbatch")) == 3
        messages = [r.getMessage() for r in caplog.records]
        assert ("adapt: sbatch refused the job (exit 1): sbatch: error: "
                "QOSMaxSubmitJobPerUserLimit; not submitting again for 5 s") in messages
        assert any(m.endswith("not submitting again for 8 s") for m in messages)
        fake_batch.mode("accept")
        adaptor.once(backlog(10), 21)
        assert len(fake_batch.jobs()) == 3, "accepted again once the back-off is over"
        assert adaptor.backoff is None
    assert fake_batch.jobs() == [], "close() cancelled them"


def test_scale_refused_raises_naming_the_command(fake_batch, tmp_path):
    from hyperloom.cluster import SubmitError
    fake_batch.mode("refuse")
    with pytest.raises(SubmitError, match="sbatch refused the job .*QOSMaxSubmitJobPerUser"):
        SlurmCluster(jobs=1, log_directory=str(tmp_path / "logs")).start()


def test_jobs_stuck_pending_are_not_resubmitted_and_are_cancelled_at_close(fake_batch,
                                                                          tmp_path):
    fake_batch.mode("accept")
    with SlurmCluster(cpus=1, log_directory=str(tmp_path / "logs")) as cluster:
        client = cluster.client()
        client.submit([tasks.const(b"x") for _ in range(5)])   # no worker will ever come
        cluster.adapt(minimum=0, maximum=2, interval=0.05, idle_timeout=60)
        wait_until(lambda: len(fake_batch.calls("squeue")) >= 20, timeout=30,
                   message="adapt to look at the queue many times")
        assert len(fake_batch.calls("sbatch")) == 2
        assert [job["state"] for job in cluster.jobs()] == ["PENDING", "PENDING"]
        assert {job["name"] for job in cluster.jobs()} == {cluster.job_name}
        ids = sorted(cluster.submitted)
    assert fake_batch.jobs() == []
    cancelled = " ".join(fake_batch.calls("scancel"))
    assert all(job_id in cancelled for job_id in ids)


def test_close_stops_the_broker_even_when_squeue_fails(fake_batch, tmp_path, caplog):
    fake_batch.mode("accept")
    cluster = SlurmCluster(jobs=1, log_directory=str(tmp_path / "logs")).start()
    broker = cluster._broker.broker
    (job,) = cluster.submitted
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error' >&2\n"
                                             "exit 1\n")
    with caplog.at_level(logging.WARNING, logger="hyperloom.cluster"):
        cluster.close()
    assert broker.poll() is not None, "the broker was stopped"
    assert any(line.endswith(job) for line in fake_batch.calls("scancel"))
    assert any("cannot list jobs named" in r.getMessage() for r in caplog.records)
