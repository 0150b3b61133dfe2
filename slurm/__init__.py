"""Slurm adapter: typed records, batch-script rendering, SlurmClient backends (no gateway imports)."""
