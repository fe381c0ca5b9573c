"""Clusters whose workers are batch jobs: a generic JobQueueCluster and SlurmCluster."""

from .jobqueue import JobQueueCluster, JobSpec, SubmitError
from .slurm import SlurmCluster

__all__ = ["JobQueueCluster", "JobSpec", "SlurmCluster", "SubmitError"]
