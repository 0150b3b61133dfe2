"""Workspaces: the unit of membership, quota and billing; each is a Slurm account."""
