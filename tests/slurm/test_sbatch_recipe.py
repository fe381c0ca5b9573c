"""The README's "Inside one allocation" recipe, submitted to a real Slurm as it is printed."""

import os
import re
import subprocess
import sys

from ..conftest import wait_until
from .minislurm import job_queued

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def recipe():
    """(plan.py, run-plan.sh) exactly as the README shows them."""
    text = open(README).read()
    section = text.split("### Inside one allocation", 1)[1].split("\n## ", 1)[0]
    plan = re.search(r"```py\n(.*?)```", section, re.S).group(1)
    script = re.search(r"```sh\n(#!/usr/bin/env bash\n.*?)```", section, re.S).group(1)
    return plan, script


def test_readme_sbatch_recipe_runs_a_plan(slurm, tmp_path):
    plan, script = recipe()
    (tmp_path / "plan.py").write_text(plan)
    (tmp_path / "run-plan.sh").write_text(script)
    # "activate the environment hyperloom is installed in first": the job inherits PATH.
    env = {**os.environ,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    out = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", f"--chdir={tmp_path}",
                                f"--output={out}", "run-plan.sh"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]

    wait_until(lambda: not job_queued(job), timeout=120, interval=0.5,
               message=f"recipe job {job} to end")
    lines = out.read_text().splitlines()
    reported = [line for line in lines if "from job" in line]
    assert reported == [f"{i} from job {job}" for i in range(8)], out.read_text()
    assert not list(tmp_path.glob("loom-*.json")), "the broker removed its scheduler file"
