"""The states a user sees an environment in (the derivation from Slurm's is ``state.py``); a module of its own so
that the CLI can name them without importing the server side."""

from __future__ import annotations

from typing import Literal

STATES = ("pending", "starting", "running", "stopping", "stopped", "failed", "unknown")
State = Literal["pending", "starting", "running", "stopping", "stopped", "failed", "unknown"]
