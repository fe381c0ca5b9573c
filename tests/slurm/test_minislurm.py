"""The test Slurm itself: jobs run, and sbatch/squeue/scancel answer."""

import os
import subprocess

from ..conftest import wait_until
from .minislurm import job_queued


def test_srun_runs_a_job_step(slurm):
    result = subprocess.run(["srun", "-n1", "sh", "-c", "echo $SLURM_JOB_ID"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()


def test_sbatch_job_runs_and_leaves_the_queue(slurm, tmp_path):
    out = tmp_path / "out.txt"
    result = subprocess.run(["sbatch", "--parsable", "-o", str(out), "--wrap",
                             "echo job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]

    def gone():
        return not job_queued(job) and out.exists() and out.read_text().strip()
    wait_until(gone, timeout=60, interval=0.2, message=f"job {job} to finish")
    assert out.read_text().startswith(f"job {job} on ")
    assert os.environ["SLURM_CONF"]
