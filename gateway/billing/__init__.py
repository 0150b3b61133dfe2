"""Per-workspace billing from Slurm's accounting: prices, usage ingest, rating, the ledger, overdue, reports."""
