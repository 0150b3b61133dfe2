"""The pillar of a provision run, built from the gateway's inventory (salt-contract: ``remotegpu:`` with root,
node, munge, slurm, gemini, users, groups, exporter). It travels in salt-api's POST body (``kwarg.pillar``) and is
never logged: it holds the munge key. What the site sets (``node_pillar_file``) lies under what the gateway
generates; the states' own defaults (``map.jinja``) under both."""

from __future__ import annotations

import base64
import json
import os
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

USERS_GROUP = "remotegpu"
MIN_UID = 1000


class NodeFacts(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    region: str
    gpu_type: str | None
    gpu_count: int
    gpu_detect: bool


class PosixUser(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    uid: int | None = None
    gid: int | None = None


class PillarError(Exception):
    """What the pillar needs cannot be read (the munge key, the site file); the message names the file only."""


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def node_gpus(node: NodeFacts) -> list[dict[str, Any]]:
    if node.gpu_count <= 0:
        return []
    return [{"type": node.gpu_type or "gpu", "count": node.gpu_count}]


def build(
    node: NodeFacts,
    *,
    root: str,
    munge_key: bytes | None,
    users: Iterable[PosixUser],
    cluster: str | None,
    site: Mapping[str, Any] | None = None,
    users_gid: int | None = None,
) -> dict[str, Any]:
    """The whole pillar for one node. ``munge_key`` None leaves it out (runs that skip ``remotegpu.munge``);
    ``users``: the gateway's POSIX accounts (system accounts, uid < 1000, are never managed)."""
    group: dict[str, Any] = {"name": USERS_GROUP} | ({"gid": users_gid} if users_gid is not None else {})
    generated: dict[str, Any] = {
        "node": {
            "name": node.name,
            "region": node.region,
            "gpus": node_gpus(node),
            "gres_autodetect": "nvml" if node.gpu_detect and node.gpu_count > 0 else "off",
        },
        "users": [
            {"name": u.name, "groups": [USERS_GROUP]}
            | ({"uid": u.uid} if u.uid is not None else {})
            | ({"gid": u.gid} if u.gid is not None else {})
            for u in sorted(users, key=lambda u: u.name)
            if u.uid is None or u.uid >= MIN_UID
        ],
        "groups": [group],
    }
    if root:  # "" leaves the minion's own pillar (or the states' default, "/") in charge
        generated["root"] = root
    if munge_key is not None:
        generated["munge"] = {"key_b64": base64.b64encode(munge_key).decode()}
    if cluster:
        generated["slurm"] = {"cluster": cluster}
    site_part = (site or {}).get("remotegpu", site or {})
    return {"remotegpu": merge(site_part if isinstance(site_part, Mapping) else {}, generated)}


def write_secrets(path: str, munge_key: bytes) -> None:
    """The master's secrets pillar (JSON, which Salt's YAML renderer reads): the munge key, mode 0600, replaced
    atomically and only when it changed."""
    target = Path(path)
    text = json.dumps({"remotegpu": {"munge": {"key_b64": base64.b64encode(munge_key).decode()}}}) + "\n"
    try:
        if target.is_file() and target.read_text() == text:
            return
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600 from the start
            out.write(text)
        Path(tmp).replace(target)
    except OSError as exc:
        raise PillarError(f"cannot write salt_secrets_pillar {path}: {exc.strerror}") from None


def read_munge_key(path: str) -> bytes:
    """The key's bytes; a failure names the path, never anything of the content."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PillarError(f"cannot read the munge key at {path}: {exc.strerror}") from None
    if len(data) < 32:
        raise PillarError(f"the munge key at {path} is shorter than 32 bytes")
    return data


def read_site(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise PillarError(f"cannot read node_pillar_file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PillarError(f"node_pillar_file {path} is not valid TOML: {exc}") from None
