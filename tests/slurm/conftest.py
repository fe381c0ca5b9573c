"""The ``slurm`` fixture: a real single-node Slurm for the session (see minislurm.py).

It reuses a Slurm that already runs jobs here; otherwise it starts one from a config in a
temporary directory and always tears it down. Where the programs are missing, or this is
not root, the tests are skipped with the reason.
"""

import pytest

from . import minislurm


@pytest.fixture(scope="session")
def slurm():
    reason = minislurm.missing_reason()
    running = minislurm.find_running() if reason is None else None
    if running is not None:
        patch = pytest.MonkeyPatch()
        patch.setenv("SLURM_CONF", running["SLURM_CONF"])
        yield running
        patch.undo()
        return
    if reason is not None:
        pytest.skip(reason)
    cluster = minislurm.MiniSlurm()
    patch = pytest.MonkeyPatch()
    try:
        cluster.start()
        patch.setenv("SLURM_CONF", cluster.conf)
        yield cluster.env
    finally:
        patch.undo()
        cluster.stop()
