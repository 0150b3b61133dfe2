"""One settings object, read from an optional TOML file and ``REMOTEGPU_*`` environment variables.

Precedence (highest first): environment variables, the TOML file named by ``REMOTEGPU_CONFIG``
(or passed explicitly), built-in defaults.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import platformdirs
from sqlalchemy.engine import make_url

from gateway.schemas import whole

ENV_PREFIX = "REMOTEGPU_"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("remotegpu", appauthor=False))


def default_database_url() -> str:
    return f"sqlite:///{default_data_dir() / 'remotegpu.db'}"


class SettingsError(ValueError):
    """The configuration is invalid; the message names the offending setting."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    database_url: str = msgspec.field(default_factory=default_database_url)
    """SQLAlchemy URL. ``sqlite:///path`` (embedded default) or ``postgresql://user@host/db`` (psycopg 3)."""
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    db_echo: bool = False
    auto_migrate: bool = True
    """``remotegpu serve`` upgrades the schema to the latest revision before listening."""
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    token_ttl_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 90
    """Lifetime of API tokens when the request does not ask for one."""
    access_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    """How long a process may reuse a token's identity and workspace role before asking the database again;
    changes made through this process take effect at once, through others within this time. 0 disables."""
    login_attempts_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 30
    """Password logins allowed per client address and minute (per gateway process); more get 429."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    workspace_creation: Literal["any", "admin"] = "any"
    """Who may create workspaces: any active user (who becomes its owner) or platform admins only."""
    default_currency: Annotated[str, msgspec.Meta(pattern=whole(r"[A-Z]{3}"))] = "CNY"
    slurm_conf: str | None = None
    """slurm.conf of the cluster (``SLURM_CONF`` for Slurm's commands); None: Slurm's default."""
    slurm_run_as: Literal["setpriv", "runuser", "sudo"] = "setpriv"
    """How Slurm commands are run as the user: ``setpriv`` (gateway runs as root; the user's ids and groups, no
    PAM session), ``runuser`` (root, with the PAM session) or ``sudo -n -u`` (a gateway that is not root)."""
    slurm_backend: Literal["cli", "rest"] = "cli"
    """How the gateway talks to Slurm: its commands (``sbatch``, ``squeue``, ``sacct``, ``sacctmgr``, run as the
    user) or slurmrestd (``slurmrestd_url``, with a JWT per user)."""
    slurmrestd_url: str | None = None
    """slurmrestd's base URL, e.g. ``http://127.0.0.1:6820``; needed by the ``rest`` backend."""
    slurm_jwt_key: str | None = None
    """The cluster's ``jwt_hs256.key``: the rest backend signs users' tokens with it. None: it asks
    ``scontrol token`` (root or the SlurmUser only). Whoever reads this key can act as any Slurm user."""
    slurm_container_runtime: Literal["pyxis", "apptainer"] | None = None
    """Container runtime of the cluster; None: jobs asking for an image are refused."""
    poll_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    slurm_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    """How long one Slurm command (or slurmrestd request) may take; it also bounds how long recovery waits
    before it submits a job that a crashed gateway recorded but Slurm does not have."""

    public_url: str | None = None
    """The gateway's URL as the cluster's nodes (environment supervisors' callbacks) and users reach it, e.g.
    ``https://gpu.example.org``; None: ``http://{host}:{port}``."""
    ssh_host: str | None = None
    """The host name users ``ssh -p PORT`` to (the gateway host's public name); None: the public URL's host."""
    relay_host: str | None = None
    """Where the port mappings listen on the gateway host; None: ``host``."""
    port_range_start: Annotated[int, msgspec.Meta(ge=1024, le=65535)] = 30000
    port_range_end: Annotated[int, msgspec.Meta(ge=1024, le=65535)] = 30999
    """Public ports of the gateway host given to environments' services (SSH), both ends included."""
    port_auto_release_hours: Annotated[int, msgspec.Meta(ge=1, le=8760)] = 48
    """A mapped port that sees no traffic for this long is released (an environment may ask for it again)."""
    relay_enabled: bool = True
    """Whether ``remotegpu serve`` runs the TCP relays of the port mappings (one gateway process per host)."""
    session_supervisor: str | None = None
    """The job side of environments, ``remotegpu-session``, as the cluster's nodes run it: from a venv every
    user can execute (made from ``/usr/bin/python3``); None: the one beside this gateway's Python."""
    jupyterhub_url: str | None = None
    """The JupyterHub in front of this gateway (``https://hub.example.org``): environments with JupyterLab
    link to their named server there. None: no hub."""
    billing_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    """How often the worker ingests Slurm's accounting and charges running work (the bill's resolution)."""
    billing_overlap_minutes: Annotated[int, msgspec.Meta(ge=0, le=10080)] = 10
    """Each ingest reads accounting from its last watermark minus this (records slurmdbd writes late)."""
    billing_grace_hours: Annotated[float, msgspec.Meta(ge=0, le=8760)] = 24.0
    """How long a workspace stays overdue (new work refused and blocked in Slurm) before it is suspended."""
    billing_suspend_jobs: Literal["finish", "cancel"] = "finish"
    """What suspension does to running training jobs (running environments are always stopped)."""

    storage_billing_copies: Literal["primary", "all"] = "primary"
    """What a workspace's storage is charged for each day: each version once, or once per ready replica."""
    secret_keys: str | None = None
    """Keys that encrypt secrets at rest (storage sources' keys): base64 32-byte AES keys, newest first, separated
    by commas; the first encrypts, all decrypt (rotation: gateway.crypto). None: no storage source can be added."""
    storage_health_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 30.0
    """How often the worker checks each enabled storage source (a HEAD of its bucket: status, latency, error)."""
    storage_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    """Connect and read timeout of the gateway's own S3 calls (health checks, multipart bookkeeping)."""
    sync_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    """How often the worker looks for due sync tasks (copies of versions between storage sources) to claim."""

    salt_api_url: str | None = None
    """salt-api (rest_cherrypy) that provisions the GPU nodes, e.g. ``http://127.0.0.1:10800``; None: nodes can be
    registered and drained, not bootstrapped or provisioned."""
    salt_api_username: str = "remotegpu"
    salt_api_password: str | None = None
    """The eauth secret of ``salt_api_username`` (for ``sharedsecret``: the master's ``sharedsecret``)."""
    salt_api_eauth: str = "sharedsecret"
    salt_api_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    """How long one salt-api request may take (a provision run waits for its job by polling, not in one call)."""
    salt_master_host: str | None = None
    """The salt-master as the nodes reach it (their minion's ``master``); None: salt-api's host."""
    salt_master_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4506
    """The master's ``ret_port`` (the minion's ``master_port``)."""
    salt_publish_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4505
    node_bootstrap_secret: str | None = None
    """Signs the nodes' one-time bootstrap tokens (HMAC-SHA256); None: no token is issued."""
    node_run_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 1800.0
    """How long a provision run waits for a node's state.apply to return before that node counts as failed."""
    node_poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often a running provision run asks salt-api whether its jobs have returned."""
    munge_key_path: str = "/etc/munge/munge.key"
    """The cluster's munge key for ``remotegpu.munge`` ("" : the gateway sends none; the master's own pillar holds
    it)."""
    salt_secrets_pillar: str | None = None
    """A pillar file on the salt-master every minion's pillar includes (the dev stack's ``remotegpu_secrets.sls``):
    the gateway writes the munge key there (mode 0600) instead of into each run's pillar, which Salt's job cache
    keeps and ``GET /jobs`` shows. None: the key travels in the run's pillar (POST body only)."""
    node_pillar_root: str = ""
    """``remotegpu:root`` of every run's pillar: a prefix for every path the states write ("" on real nodes)."""
    node_pillar_file: str | None = None
    """A TOML file of site pillar under ``remotegpu`` (slurm controller, gemini mounts, exporter, ...), merged under
    what the gateway generates from its inventory."""

    def __post_init__(self) -> None:
        if self.slurm_backend == "rest" and not self.slurmrestd_url:
            raise ValueError("slurm_backend 'rest' needs slurmrestd_url")
        if self.port_range_end < self.port_range_start:
            raise ValueError("port_range_end is below port_range_start")

    @property
    def gateway_url(self) -> str:
        """Where the gateway is reached (``public_url``, else its own address), without a trailing slash."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def database_url_redacted(self) -> str:
        """The database URL with any password masked, safe to log."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    def __repr__(self) -> str:
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        fields["database_url"] = self.database_url_redacted
        for secret in ("secret_keys", "salt_api_password", "node_bootstrap_secret"):
            if fields[secret]:
                fields[secret] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    known = set(Settings.__struct_fields__)
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in known:
            out[name] = value
    return out


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the TOML file and the environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if path:
        try:
            with Path(path).open("rb") as fh:
                values.update(tomllib.load(fh))
        except OSError as exc:
            raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    values.update(_env_overrides(environ))
    try:
        # strict=False lets "8001" (from the environment) become an int, "true" a bool.
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc
