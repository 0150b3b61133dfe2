"""The e2e tests' share of the cluster fixtures: a real gateway (``remotegpu serve``) on the local Slurm cluster,
throw-away POSIX users and Slurm accounts, the same fixtures the integration tests use."""

from tests.integration.slurm.conftest import gateway, posix_user, slurm_account, slurm_cluster

__all__ = ["gateway", "posix_user", "slurm_account", "slurm_cluster"]
