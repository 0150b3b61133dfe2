"""The Slurm client the settings ask for: one place that knows both backends."""

from __future__ import annotations

from gateway.config import Settings
from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient
from slurm.rest import RestSlurmClient
from slurm.tokens import ScontrolTokens, SignedTokens, TokenCache


def make_slurm_client(settings: Settings) -> SlurmClient:
    """``cli`` runs Slurm's commands as the user; ``rest`` talks to slurmrestd with a JWT per user.

    slurmrestd 22.05 cannot change an existing account's GrpTRES, so the REST backend sets quotas through
    ``sacctmgr`` (the CLI backend); everything else goes over HTTP.
    """
    cli = CliSlurmClient(
        slurm_conf=settings.slurm_conf, run_as=settings.slurm_run_as, timeout=settings.slurm_timeout_seconds
    )
    if settings.slurm_backend == "cli":
        return cli
    assert settings.slurmrestd_url is not None  # Settings checks it
    source = (
        SignedTokens.from_file(settings.slurm_jwt_key)
        if settings.slurm_jwt_key
        else ScontrolTokens(slurm_conf=settings.slurm_conf)
    )
    return RestSlurmClient(
        settings.slurmrestd_url,
        tokens=TokenCache(source),
        slurm_conf=settings.slurm_conf,
        limits=cli,
        timeout=settings.slurm_timeout_seconds,
    )
