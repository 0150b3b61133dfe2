"""Training jobs: Slurm batch jobs submitted as the user, followed by one poller for the whole cluster."""
