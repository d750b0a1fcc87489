"""SLURM submission through submitit (slurm/submit.py) and the job it runs (slurm/job.py)."""
