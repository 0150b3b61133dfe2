"""Development environments: durable definitions whose starts are Slurm jobs (sessions) of the one jobs table."""
