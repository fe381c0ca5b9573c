"""SlurmCluster: hyperloom workers as Slurm jobs (sbatch / squeue / scancel)."""

from __future__ import annotations

from .jobqueue import JobQueueCluster, JobSpec

# squeue output: one job per line, fields separated by '|' (no Slurm field holds one).
SQUEUE_FORMAT = "%i|%T|%j|%N"


class SlurmCluster(JobQueueCluster):
    """``with SlurmCluster(jobs=2, cpus=1) as cluster: client = cluster.client()``.

    The broker runs in this machine (a login node); each job runs ``workers_per_job``
    workers of ``cpus`` cores through ``srun``. Options are Slurm's: ``memory`` per job
    (``--mem``), ``walltime`` (``--time``), ``partition``, ``account``, extra
    ``job_directives`` (lines without ``#SBATCH``), ``prologue`` shell lines (``module
    load``, activating an environment), ``log_directory`` (job output, broker log and the
    scheduler file; default ``~/.hyperloom/JOB_NAME``, removed at close). Every job is
    named ``cluster.job_name``, so ``squeue -h -n NAME`` shows them. ``broker_job=True``
    runs the broker in a job of its own (named ``cluster.broker_job_name``) instead of
    here; ``broker_wait`` is how long to wait for it to start. ``dashboard=True`` starts
    loom-dashboard with the cluster (``cluster.dashboard_url``), its jobs shown on the page.
    """

    dashboard_jobs_option = "--slurm-job-name"

    submit_command = ("sbatch", "--parsable")
    cancel_command = ("scancel",)

    def __init__(self, jobs: int = 0, cpus: int = 1, workers_per_job: int = 1,
                 memory: str | None = None, walltime: str = "00:30:00",
                 partition: str | None = None, account: str | None = None,
                 job_directives=(), prologue=(), log_directory: str | None = None,
                 worker_args=(), **options):
        spec = JobSpec(cpus=cpus, workers_per_job=workers_per_job, memory=memory,
                       walltime=walltime, queue=partition, account=account,
                       job_directives=tuple(job_directives), prologue=tuple(prologue),
                       worker_args=tuple(worker_args))
        if cpus < 1 or workers_per_job < 1:
            raise ValueError("cpus and workers_per_job must be at least 1")
        super().__init__(jobs, spec, log_directory=log_directory, **options)

    def job_header(self, name: str, ntasks: int, cpus: int) -> list[str]:
        spec = self.spec
        output = f"{self.log_directory or self.directory}/{name}-%j.out"
        lines = [f"--job-name={name}", f"--ntasks={ntasks}", f"--cpus-per-task={cpus}",
                 f"--time={spec.walltime}", f"--output={output}"]
        if spec.memory:
            lines.append(f"--mem={spec.memory}")
        if spec.queue:
            lines.append(f"--partition={spec.queue}")
        if spec.account:
            lines.append(f"--account={spec.account}")
        lines += list(spec.job_directives)
        return [f"#SBATCH {line}" for line in lines]

    def launcher(self, ntasks: int, cpus: int) -> list[str]:
        # --cpus-per-task again: since Slurm 22.05 srun does not take it from sbatch.
        return ["srun", f"--ntasks={ntasks}", f"--cpus-per-task={cpus}"]

    def list_jobs(self, name: str | None = None) -> list[dict]:
        name = name or self.job_name
        result = self._run(["squeue", "-h", "-n", name, "-o", SQUEUE_FORMAT])
        if result.returncode != 0:
            raise RuntimeError(f"squeue failed (exit {result.returncode}): "
                               f"{result.stderr.strip()}")
        jobs = []
        for line in result.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) == 4:
                jobs.append(dict(zip(("job_id", "state", "name", "nodes"), fields)))
        return jobs
