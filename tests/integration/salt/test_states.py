"""The remotegpu Salt formula (salt_states/) on real Salt: dry runs of every state through salt-api and the dev
master's minions, real runs into a scratch root checked byte for byte (and a second run that changes nothing),
both OS families rendered by a masterless salt-call with grains set, and the secret munge key kept out of output."""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.salt.conftest import REPO, SECRETS_LOCK, SaltStack, secrets_pillar_away
from tests.locks import held

pytestmark = pytest.mark.integration

STATES = [
    "remotegpu.users",
    "remotegpu.gpu",
    "remotegpu.munge",
    "remotegpu.slurmd",
    "remotegpu.gemini",
    "remotegpu.exporter",
]
HOST_FUNCTIONS = ("pkg.", "service.", "user.", "group.", "mount.mounted", "module.run")
MUNGE_KEY = base64.b64encode(hashlib.sha512(b"remotegpu test munge key").digest() * 16).decode()  # 1024 bytes


def node_pillar(root: Path | str, **changes: Any) -> dict[str, Any]:
    """The pillar the gateway sends (salt-contract.md), with ``changes`` merged into remotegpu."""
    pillar: dict[str, Any] = {
        "root": str(root),
        "node": {"name": "n1", "region": "local", "gpus": [{"type": "a100", "count": 2}], "gres_autodetect": "off"},
        "munge": {"key_b64": MUNGE_KEY},
        "slurm": {
            "cluster": "remotegpu",
            "controller": "gw-host",
            "conf_dir": "/etc/slurm",
            "include_url": "",
            "cgroup": {"constrain_devices": True, "constrain_cores": True, "constrain_ram": True},
        },
        "gemini": {
            "root": "/gemini",
            "cache_dir": "/var/cache/remotegpu/datasets",
            "cache_max_gb": 200,
            "mounts": [
                {
                    "kind": "nfs",
                    "source": "nfs01:/export/code",
                    "target": "/gemini/code-store",
                    "options": "rw,hard,noatime,_netdev",
                },
                {
                    "kind": "s3",
                    "source": "datasets",
                    "target": "/mnt/datasets",
                    "options": "ro,_netdev,allow_other,url=http://s3.local:8333",
                },
            ],
        },
        "users": [{"name": "alice", "uid": 20001, "gid": 20001, "groups": ["remotegpu"]}],
        "groups": [{"name": "remotegpu", "gid": 20000}],
        "exporter": {"port": 9835, "listen": "0.0.0.0", "command": "/opt/remotegpu/venv/bin/remotegpu-node-exporter"},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(pillar.get(key), dict):
            pillar[key] = {**pillar[key], **value}
        else:
            pillar[key] = value
    return {"remotegpu": pillar}


def apply(stack: SaltStack, mods: str, pillar: dict[str, Any], *, test: bool, tgt: str | list[str] = "n1") -> Any:
    """state.apply through salt-api, as the gateway runs it (per-run pillar in the POST body)."""
    return stack.call("state.apply", tgt=tgt, arg=[mods], kwarg={"test": test, "pillar": pillar, "queue": True})


def by_id(states: Any) -> dict[str, dict[str, Any]]:
    """One minion's state return keyed by state id (a list is a render error: failed here, with its text)."""
    assert isinstance(states, dict), f"render error: {states}"
    return {
        state["__id__"]: {**state, "fun": key.split("_|-")[0] + "." + key.split("_|-")[-1]}
        for key, state in states.items()
    }


def files_under(root: Path) -> dict[str, str]:
    """Every path under root with its type and mode, e.g. {"etc/munge/munge.key": "f0400"}."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        kind = "d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode) else "?"
        found[str(path.relative_to(root))] = f"{kind}{stat.S_IMODE(mode):04o}"
    return found


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


# -- dry runs through the master -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mods", [*STATES, "remotegpu"])
def test_every_state_dry_run_through_salt_api(salt_stack: SaltStack, scratch: Path, mods: str) -> None:
    ret = apply(salt_stack, mods, node_pillar(scratch), test=True, tgt=salt_stack.minions)
    assert sorted(ret) == salt_stack.minions
    for minion in salt_stack.minions:
        states = by_id(ret[minion])
        failed = {sid: s["comment"] for sid, s in states.items() if s["result"] is False}
        assert not failed, f"{minion}: {failed}"
        expected = STATES if mods == "remotegpu" else [mods]
        assert {s["__sls__"] for s in states.values()} == set(expected)
        for state in states.values():
            assert state["comment"], state  # every line says something a person can read
    assert list(scratch.iterdir()) == []  # a dry run writes nothing

    states = by_id(ret["n1"])
    # with a scratch root the dry run still shows the host steps as a real node would run them, and says so
    host = {sid: s for sid, s in states.items() if s["fun"].startswith(HOST_FUNCTIONS)}
    notes = [s["comment"] for sid, s in states.items() if sid.endswith("_scratch")]
    if mods in ("remotegpu.munge", "remotegpu.slurmd", "remotegpu.exporter", "remotegpu", "remotegpu.users"):
        assert host, states
        assert notes and all("dry run also shows the host steps" in note for note in notes)
    if mods in ("remotegpu.slurmd", "remotegpu"):
        gres = states["remotegpu_gres_conf"]
        assert gres["result"] is None and "is set to be changed" in gres["comment"]
        assert states["remotegpu_slurmd_package"]["fun"] == "pkg.installed"
    if mods in ("remotegpu.users", "remotegpu"):
        assert states["remotegpu_user_alice"]["fun"] == "user.present"


def test_highstate_applies_the_formula_through_top_sls(salt_stack: SaltStack, scratch: Path) -> None:
    ret = salt_stack.call("state.apply", tgt="n2", kwarg={"test": True, "queue": True, "pillar": node_pillar(scratch)})
    states = by_id(ret["n2"])
    assert {s["__sls__"] for s in states.values()} == set(STATES)
    assert not [s for s in states.values() if s["result"] is False]
    assert list(scratch.iterdir()) == []


def test_host_mode_dry_run_changes_nothing_on_this_machine(salt_stack: SaltStack) -> None:
    """remotegpu:root "" is a real node: the dry run reads this machine's /etc but changes nothing (its users and
    groups are looked up by name: other tests add POSIX users to /etc/passwd meanwhile)."""
    pillar = node_pillar("")
    accounts = [("user", u["name"]) for u in pillar["remotegpu"]["users"]]
    accounts += [("group", g["name"]) for g in pillar["remotegpu"]["groups"]]
    watched = [
        Path(p)
        for p in (
            "/etc/fstab",
            "/etc/munge/munge.key",
            "/etc/slurm/gres.conf",
            "/etc/default/slurmd",
            "/gemini",
            "/var/cache/remotegpu",
        )
    ]

    def snapshot() -> dict[str, str | None]:
        return {
            str(p): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" if p.is_dir() else None)
            for p in watched
        }

    def exists(kind: str, name: str) -> bool:
        try:
            (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
        except KeyError:
            return False
        return True

    before, had = snapshot(), [exists(*a) for a in accounts]
    states = by_id(apply(salt_stack, "remotegpu", pillar, test=True)["n1"])
    assert snapshot() == before and [exists(*a) for a in accounts] == had
    failed = {sid: s["comment"] for sid, s in states.items() if s["result"] is False}
    assert not failed
    assert not any(sid.endswith("_scratch") or "Skipped" in s["comment"] for sid, s in states.items())
    assert states["remotegpu_gres_conf"]["name"] == "/etc/slurm/gres.conf"
    assert states["remotegpu_munge_key"]["name"] == "/etc/munge/munge.key"
    assert states["remotegpu_mount_1_mounted"]["fun"] == "mount.mounted"
    assert states["remotegpu_exporter_service"]["fun"] == "service.running"


# -- real runs into a scratch root ---------------------------------------------------------------------------------

GRES = """\
# gres.conf of node n1: managed by Salt (remotegpu.slurmd) -- DO NOT EDIT, changes are overwritten
# GPUs from the gateway's inventory, one line per device
AutoDetect=off
NodeName=n1 Name=gpu Type=a100 File=/dev/nvidia0
NodeName=n1 Name=gpu Type=a100 File=/dev/nvidia1
"""
CGROUP = """\
# cgroup.conf: managed by Salt (remotegpu.slurmd) -- DO NOT EDIT, changes are overwritten
# Jobs see only the GPUs, cores and memory Slurm gave them.
CgroupPlugin=autodetect
ConstrainDevices=yes
ConstrainCores=yes
ConstrainRAMSpace=yes
"""
SLURM_CONF = """\
# slurm.conf of node n1: managed by Salt (remotegpu.slurmd) -- DO NOT EDIT, changes are overwritten
# Cluster remotegpu, controller gw-host. Everything else (nodes, partitions, plugins) is in the included
# file, which must be the very file slurmctld reads (the site keeps it identical on every node, e.g. on shared
# storage) and must not set ClusterName or SlurmctldHost again.
ClusterName=remotegpu
SlurmctldHost=gw-host
Include /etc/slurm/slurm-cluster.conf
"""
SLURMD_DEFAULTS = """\
# slurmd's options: managed by Salt (remotegpu.slurmd) -- DO NOT EDIT, changes are overwritten
# slurm.conf from /etc/slurm
SLURMD_OPTIONS=""
"""
FSTAB = (
    "nfs01:/export/code\t\t/gemini/code-store\tnfs\trw,hard,noatime,_netdev\t0 0\n"
    "datasets\t\t/mnt/datasets\tfuse.s3fs\tro,_netdev,allow_other,url=http://s3.local:8333\t0 0\n"
)
CACHE_CONF = """\
# The node-local dataset cache: managed by Salt (remotegpu.gemini) -- DO NOT EDIT, changes are overwritten
# Read by remotegpu-stage-in (each user's cache is REMOTEGPU_CACHE_DIR/<uid>) and by remotegpu-cache-prune, which
# cron runs hourly: it deletes the least recently used files until the cache holds at most REMOTEGPU_CACHE_MAX_GB.
REMOTEGPU_CACHE_DIR=/var/cache/remotegpu/datasets
REMOTEGPU_CACHE_MAX_GB=200
"""
CRON = (
    "# managed by Salt (remotegpu.gemini) -- DO NOT EDIT: the dataset cache's size limit (200 GB in"
    " /etc/remotegpu/cache.conf)\n17 * * * * root /usr/local/sbin/remotegpu-cache-prune /etc/remotegpu/cache.conf\n"
)
GEMINI_README = """\
/gemini on node n1: managed by Salt (remotegpu.gemini) -- DO NOT EDIT, changes are overwritten

Paths inside jobs and environments (VirtAI-compatible); each job gets its own bind mounts on these mount points:
  /gemini/code                     GEMINI_CODE           rw, persistent per user and workspace
  /gemini/data-1 .. data-3         GEMINI_DATA_IN1..3    ro, datasets (staged in from /var/cache/remotegpu/datasets)
  /gemini/pretrain, pretrain2, 3   GEMINI_PRETRAIN..3    ro, models
  /gemini/output                   GEMINI_DATA_OUT       rw
Site storage mounted on this node (fstab):
  /gemini/code-store  nfs  nfs01:/export/code
  /mnt/datasets  s3  datasets
"""
UNIT = """\
# managed by Salt (remotegpu.exporter) -- DO NOT EDIT, changes are overwritten
[Unit]
Description=RemoteGPU node exporter: this node's NVIDIA GPUs (NVML) as Prometheus metrics on 0.0.0.0:9835
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=/opt/remotegpu/venv/bin/remotegpu-node-exporter --listen 0.0.0.0 --port 9835
Restart=on-failure
RestartSec=5
# an unprivileged user of its own; it tells jobs apart by /proc/<pid>/cgroup (Slurm's task/cgroup)
DynamicUser=yes
SupplementaryGroups=video
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""
TREE = {
    "etc": "d0755",
    "etc/munge": "d0700",
    "etc/munge/munge.key": "f0400",
    "etc/slurm": "d0755",
    "etc/slurm/gres.conf": "f0644",
    "etc/slurm/cgroup.conf": "f0644",
    "etc/slurm/slurm.conf": "f0644",
    "etc/default": "d0755",
    "etc/default/slurmd": "f0644",
    "etc/fstab": "f0644",
    "etc/remotegpu": "d0755",
    "etc/remotegpu/cache.conf": "f0644",
    "etc/cron.d": "d0755",
    "etc/cron.d/remotegpu-cache-prune": "f0644",
    "etc/systemd": "d0755",
    "etc/systemd/system": "d0755",
    "etc/systemd/system/remotegpu-node-exporter.service": "f0644",
    "gemini": "d0755",
    "gemini/README": "f0444",
    "gemini/code-store": "d0755",
    **{
        f"gemini/{slot}": "d0755"
        for slot in ("code", "data-1", "data-2", "data-3", "pretrain", "pretrain2", "pretrain3", "output")
    },
    "mnt": "d0755",
    "mnt/datasets": "d0755",
    "usr": "d0755",
    "usr/local": "d0755",
    "usr/local/sbin": "d0755",
    "usr/local/sbin/remotegpu-cache-prune": "f0755",
    "var": "d0755",
    "var/cache": "d0755",
    "var/cache/remotegpu": "d0755",
    "var/cache/remotegpu/datasets": "d1777",
    "var/log": "d0755",
    "var/log/slurm": "d0755",
    "var/spool": "d0755",
    "var/spool/slurmd": "d0755",
}


def test_real_run_writes_the_files_byte_for_byte_and_a_second_run_changes_nothing(
    salt_stack: SaltStack, scratch: Path
) -> None:
    pillar = node_pillar(scratch)
    first = by_id(apply(salt_stack, "remotegpu", pillar, test=False)["n1"])
    assert not {sid: s["comment"] for sid, s in first.items() if s["result"] is not True}

    assert files_under(scratch) == TREE
    expected = {
        "etc/slurm/gres.conf": GRES,
        "etc/slurm/cgroup.conf": CGROUP,
        "etc/slurm/slurm.conf": SLURM_CONF,
        "etc/default/slurmd": SLURMD_DEFAULTS,
        "etc/fstab": FSTAB,
        "etc/remotegpu/cache.conf": CACHE_CONF,
        "etc/cron.d/remotegpu-cache-prune": CRON,
        "gemini/README": GEMINI_README,
        "etc/systemd/system/remotegpu-node-exporter.service": UNIT,
    }
    for path, text in expected.items():
        assert (scratch / path).read_text() == text, path
    assert (scratch / "etc/munge/munge.key").read_bytes() == base64.b64decode(MUNGE_KEY)

    # host steps: skipped, each saying what a real node would get; nothing else is a notice
    skipped = {sid for sid, s in first.items() if s["fun"] == "test.show_notification" and "Skipped" in s["comment"]}
    assert skipped == {
        "remotegpu_group_remotegpu",
        "remotegpu_user_alice",
        "remotegpu_munge_package",
        "remotegpu_munge_service",
        "remotegpu_slurmd_package",
        "remotegpu_slurmd_service",
        "remotegpu_mount_packages",
        "remotegpu_mount_1_mounted",
        "remotegpu_mount_2_mounted",
        "remotegpu_exporter_daemon_reload",
        "remotegpu_exporter_service",
    }
    assert (
        "add user alice (uid 20001), its own group gid 20001, groups remotegpu"
        in first["remotegpu_user_alice"]["comment"]
    )
    assert first["remotegpu_gres_conf"]["changes"] == {"diff": "New file", "mode": "0644"}
    assert first["remotegpu_mount_1_fstab"]["changes"] == {"persist": "new"}

    second = by_id(apply(salt_stack, "remotegpu", pillar, test=False)["n1"])
    assert set(second) == set(first)
    assert {sid: s["changes"] for sid, s in second.items() if s["changes"] or s["result"] is not True} == {}
    assert files_under(scratch) == TREE
    for path, text in expected.items():
        assert (scratch / path).read_text() == text, path


def test_gres_autodetect_no_gpus_and_configless(salt_stack: SaltStack, scratch: Path) -> None:
    pillar = node_pillar(
        scratch, node={"name": "n2", "gpus": [{"type": "h100", "count": 1}, {"type": "t4", "count": 2}]}
    )
    by_id(apply(salt_stack, "remotegpu.slurmd", pillar, test=False, tgt="n2")["n2"])
    gres = (scratch / "etc/slurm/gres.conf").read_text().splitlines()
    assert gres[2:] == [
        "AutoDetect=off",
        "NodeName=n2 Name=gpu Type=h100 File=/dev/nvidia0",
        "NodeName=n2 Name=gpu Type=t4 File=/dev/nvidia1",
        "NodeName=n2 Name=gpu Type=t4 File=/dev/nvidia2",
    ]

    pillar = node_pillar(
        scratch,
        node={"name": "n2", "gpus": [{"type": "a100", "count": 2}], "gres_autodetect": "nvml"},
        slurm={"include_url": "gw-host:6817"},
    )
    states = by_id(apply(salt_stack, "remotegpu.slurmd", pillar, test=False, tgt="n2")["n2"])
    assert "+AutoDetect=nvml" in states["remotegpu_gres_conf"]["changes"]["diff"]
    assert (scratch / "etc/slurm/gres.conf").read_text() == (
        "# gres.conf of node n2: managed by Salt (remotegpu.slurmd) -- DO NOT EDIT, changes are overwritten\n"
        "# GPUs found by slurmd through NVML at start-up (the gateway expects 2 x a100)\nAutoDetect=nvml\n"
    )
    assert "remotegpu_slurm_conf" not in states  # configless: slurm.conf comes from slurmctld
    assert (scratch / "etc/default/slurmd").read_text().splitlines()[
        -1
    ] == 'SLURMD_OPTIONS="--conf-server gw-host:6817"'

    pillar = node_pillar(scratch, node={"name": "n2", "gpus": []})
    apply(salt_stack, "remotegpu.slurmd", pillar, test=False, tgt="n2")
    assert (scratch / "etc/slurm/gres.conf").read_text().splitlines()[1:] == [
        "# no GPUs on this node",
        "AutoDetect=off",
    ]
    again = by_id(apply(salt_stack, "remotegpu.slurmd", pillar, test=False, tgt="n2")["n2"])
    assert not any(s["changes"] for s in again.values())


def test_exporter_unit_follows_the_pillar(salt_stack: SaltStack, scratch: Path) -> None:
    unit = scratch / "etc/systemd/system/remotegpu-node-exporter.service"
    apply(salt_stack, "remotegpu.exporter", node_pillar(scratch), test=False)
    assert unit.read_text() == UNIT
    exporter = {
        "port": 9100,
        "listen": "127.0.0.1",
        "command": "/usr/local/bin/remotegpu-node-exporter",
        "user": "root",
    }
    states = by_id(apply(salt_stack, "remotegpu.exporter", node_pillar(scratch, exporter=exporter), test=False)["n1"])
    assert states["remotegpu_exporter_unit"]["changes"]["diff"].count("\n+") >= 3
    text = unit.read_text()
    assert "ExecStart=/usr/local/bin/remotegpu-node-exporter --listen 127.0.0.1 --port 9100\n" in text
    assert "\nUser=root\n" in text and "DynamicUser" not in text
    again = by_id(apply(salt_stack, "remotegpu.exporter", node_pillar(scratch, exporter=exporter), test=False)["n1"])
    assert not any(s["changes"] for s in again.values())


def test_slurmd_accepts_the_gres_and_cgroup_files(salt_stack: SaltStack, scratch: Path, tmp_path: Path) -> None:
    """Slurm's own parser (slurmd -G, which reads gres.conf and, with task/cgroup, cgroup.conf) on what the state
    wrote, the GPUs being character devices in a scratch /dev (pillar lookup gpu_device_prefix)."""
    slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
    if not Path(slurmd).exists():
        pytest.skip("slurmd is not installed (deploy/dev/slurm/up installs it)")
    dev = tmp_path / "dev"
    dev.mkdir()
    for i in range(3):
        os.mknod(dev / f"gpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    gpus = [{"type": "a100", "count": 2}, {"type": "t4", "count": 1}]
    pillar = node_pillar(scratch, node={"name": "n1", "gpus": gpus}, lookup={"gpu_device_prefix": f"{dev}/gpu"})
    states = by_id(apply(salt_stack, "remotegpu.slurmd", pillar, test=False)["n1"])
    assert all(s["result"] is True for s in states.values())
    conf = scratch / "etc/slurm"
    (conf / "check.conf").write_text(
        "ClusterName=remotegpu\nSlurmctldHost=localhost\nGresTypes=gpu\nProctrackType=proctrack/cgroup\n"
        f"TaskPlugin=task/cgroup\nSlurmdSpoolDir={tmp_path}/spool\nSlurmdLogFile={tmp_path}/slurmd.log\n"
        "NodeName=n1 Gres=gpu:a100:2,gpu:t4:1 CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=n1\n"
    )
    out = subprocess.run(
        [slurmd, "-G", "-f", str(conf / "check.conf"), "-N", "n1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    found = [line.split("Gres ", 1)[1] for line in out.stderr.splitlines() if "Gres Name=" in line]
    assert [(f.split()[1], f.split()[5]) for f in found] == [
        ("Type=a100", f"File={dev}/gpu0"),
        ("Type=a100", f"File={dev}/gpu1"),
        ("Type=t4", f"File={dev}/gpu2"),
    ], out.stderr
    (conf / "cgroup.conf").write_text((conf / "cgroup.conf").read_text() + "NotAKey=1\n")  # the check can fail
    bad = subprocess.run(
        [slurmd, "-G", "-f", str(conf / "check.conf"), "-N", "n1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "cgroup.conf" in bad.stderr


@pytest.mark.parametrize(
    ("mods", "changes", "named"),
    [
        (
            "remotegpu.slurmd",
            {"node": {"name": "n1", "gpus": [{"type": "a100; rm -rf /", "count": 2}]}},
            "remotegpu:node:gpus[0]",
        ),
        (
            "remotegpu.slurmd",
            {"node": {"name": "n1", "gpus": [{"type": "a100", "count": "2\nNodeName=x"}]}},
            "remotegpu:node:gpus[0]",
        ),
        ("remotegpu.slurmd", {"node": {"name": "../n1", "gpus": []}}, "remotegpu:node:name"),
        ("remotegpu.slurmd", {"slurm": {"include_url": "gw host:6817"}}, "remotegpu:slurm:include_url"),
        ("remotegpu.slurmd", {"lookup": {"gpu_device_prefix": "dev/nv idia"}}, "remotegpu:lookup:gpu_device_prefix"),
        (
            "remotegpu.gemini",
            {"gemini": {"mounts": [{"kind": "nfs", "source": "a:/b", "target": "/x/../etc"}]}},
            "remotegpu:gemini:mounts[0]",
        ),
        (
            "remotegpu.gemini",
            {"gemini": {"mounts": [{"kind": "cifs", "source": "a:/b", "target": "/x"}]}},
            "remotegpu:gemini:mounts[0]",
        ),
        ("remotegpu.gemini", {"gemini": {"cache_max_gb": "lots"}}, "remotegpu:gemini:cache_max_gb"),
        ("remotegpu.exporter", {"exporter": {"command": "/bin/sh -c reboot"}}, "remotegpu:exporter:command"),
        ("remotegpu.exporter", {"exporter": {"port": 70000}}, "remotegpu:exporter:port"),
        ("remotegpu.exporter", {"exporter": {"user": "root\nExecStartPre=/bin/x"}}, "remotegpu:exporter:user"),
        ("remotegpu.users", {"users": [{"name": "Bob;id", "uid": 1}]}, "remotegpu:users[0]"),
        ("remotegpu.users", {"groups": [{"name": "ok", "gid": "x"}]}, "remotegpu:groups[0]"),
    ],
)
def test_bad_pillar_fails_naming_the_key_and_writes_nothing(
    salt_stack: SaltStack, scratch: Path, mods: str, changes: dict[str, Any], named: str
) -> None:
    for test in (True, False):
        states = by_id(apply(salt_stack, mods, node_pillar(scratch, **changes), test=test)["n1"])
        assert len(states) == 2, states  # the scratch note and the failure, nothing else
        failed = [s for s in states.values() if s["result"] is False]
        assert len(failed) == 1 and named in failed[0]["comment"] and "nothing" in failed[0]["comment"]
    assert list(scratch.iterdir()) == []


def test_bad_root_is_a_render_error_naming_it(salt_stack: SaltStack, tmp_path: Path) -> None:
    ret = apply(salt_stack, "remotegpu.munge", node_pillar(f"{tmp_path}/a b: c"), test=True)["n1"]
    assert isinstance(ret, list) and "remotegpu:root must be" in ret[0]


def test_munge_key_is_written_0400_and_never_shown(salt_stack: SaltStack, scratch: Path) -> None:
    key = os.urandom(1024)
    key_b64 = base64.b64encode(key).decode()
    pillar = node_pillar(scratch, munge={"key_b64": key_b64})
    http = salt_stack.client()
    texts = []
    try:
        for low in (
            {
                "fun": "state.apply",
                "arg": ["remotegpu.munge"],
                "kwarg": {"test": True, "pillar": pillar, "queue": True},
            },
            {"fun": "state.apply", "arg": ["remotegpu.munge"], "kwarg": {"pillar": pillar, "queue": True}},
            {"fun": "state.show_sls", "arg": ["remotegpu.munge"], "kwarg": {"pillar": pillar, "queue": True}},
        ):
            response = http.post("/", json=[{"client": "local", "tgt": "n1", **low}])
            assert response.status_code == 200
            texts.append(response.text)
    finally:
        http.close()
    path = scratch / "etc/munge/munge.key"
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    states = by_id(json.loads(texts[1])["return"][0]["n1"])
    assert states["remotegpu_munge_key"]["changes"]["new"] == hashlib.sha256(key).hexdigest()
    for text in texts:
        assert key_b64 not in text and key_b64[:24] not in text
    log = salt_stack.root / "nodes/n1/salt/var/log/salt/minion"
    assert not log.exists() or key_b64[:24] not in log.read_text(errors="replace")

    # no key in pillar: the state fails saying so, in a dry run too (not while a test has the master's secrets
    # pillar hold one)
    with held(SECRETS_LOCK), secrets_pillar_away(salt_stack):
        for test in (True, False):
            states = by_id(
                apply(salt_stack, "remotegpu.munge", node_pillar(scratch, munge={"key_b64": ""}), test=test)["n1"]
            )
            assert states["remotegpu_munge_key"]["result"] is False
            assert "No munge key in pillar" in states["remotegpu_munge_key"]["comment"]


def test_munge_key_from_the_masters_own_pillar_stays_out_of_the_job(salt_stack: SaltStack, scratch: Path) -> None:
    """The key in the master's remotegpu_secrets.sls (deploy/dev/salt/up's pillar top takes it for every minion):
    the per-run pillar carries none, so neither the job Salt keeps nor any answer holds it."""
    key = os.urandom(1024)
    key_b64 = base64.b64encode(key).decode()
    secrets = salt_stack.root / "pillar/remotegpu_secrets.sls"
    pillar = node_pillar(scratch)
    del pillar["remotegpu"]["munge"]
    with held(SECRETS_LOCK), secrets_pillar_away(salt_stack):
        secrets.touch(mode=0o600)
        secrets.write_text(json.dumps({"remotegpu": {"munge": {"key_b64": key_b64}}}))
        try:
            http = salt_stack.client()
            try:
                low = {
                    "client": "local",
                    "tgt": "n1",
                    "fun": "state.apply",
                    "arg": ["remotegpu.munge"],
                    "kwarg": {"pillar": pillar, "queue": True},
                    "full_return": True,
                }
                response = http.post("/", json=[low])
                ret = response.json()["return"][0]["n1"]
                job = http.get(f"/jobs/{ret['jid']}").text
            finally:
                http.close()
        finally:
            secrets.unlink()
    states = by_id(ret["ret"])
    assert states["remotegpu_munge_key"]["result"] is True
    assert (scratch / "etc/munge/munge.key").read_bytes() == key
    assert key_b64[:24] not in response.text and key_b64[:24] not in job
    jobs = salt_stack.root / "master/var/cache/salt/master/jobs"  # every job Salt keeps: this fresh key in none
    assert not [p for p in jobs.rglob("*") if p.is_file() and key_b64[:24].encode() in p.read_bytes()]


def test_cache_prune_keeps_the_cache_within_its_limit(salt_stack: SaltStack, scratch: Path, tmp_path: Path) -> None:
    apply(salt_stack, "remotegpu.gemini", node_pillar(scratch), test=False)
    cache = tmp_path / "cache"
    files = []
    for i, name in enumerate(("old", "middle", "new")):
        path = cache / "1000" / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1_700_000_000 + i * 100, 1_700_000_000))
        files.append(path)
    conf = tmp_path / "cache.conf"
    conf.write_text(f"REMOTEGPU_CACHE_DIR={cache}\nREMOTEGPU_CACHE_MAX_GB=1\n")
    prune = scratch / "usr/local/sbin/remotegpu-cache-prune"
    env = {"PATH": os.environ["PATH"], "REMOTEGPU_CACHE_LIMIT_BYTES": "2500"}
    subprocess.run([str(prune), str(conf)], check=True, env=env, timeout=30)
    assert [p.exists() for p in files] == [False, True, True]  # the least recently used went
    assert not (cache / "1000/ol").exists() and (cache / "1000").is_dir()
    subprocess.run([str(prune), str(conf)], check=True, env={"PATH": os.environ["PATH"]}, timeout=30)  # 1 GB: keeps
    assert [p.exists() for p in files] == [False, True, True]


# -- both OS families, rendered and applied masterless (salt-call --local) with grains set --------------------------


def salt_call(stack: SaltStack, tmp_path: Path, grains: dict[str, Any], *args: str) -> Any:
    """salt-call --local from the salt venv on the repo's state tree, with ``grains`` overriding the real ones."""
    conf = tmp_path / f"local-{len(list(tmp_path.glob('local-*')))}"
    conf.mkdir()
    (conf / "minion").write_text(
        json.dumps(
            {
                "id": "n1",
                "root_dir": str(conf / "salt"),
                "file_client": "local",
                "file_roots": {"base": [str(REPO / "salt_states")]},
                "log_file": str(conf / "minion.log"),
                "grains": grains,
            }
        )
    )
    out = subprocess.run(
        [str(stack.salt_bin / "salt-call"), "-c", str(conf), "--local", "--out=json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.stdout, out.stderr[-2000:]
    return json.loads(out.stdout)["local"]


def lowstate(show: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """state.show_sls output as {id: ("mod.fun", args)}."""
    assert isinstance(show, dict), show
    result = {}
    for sid, body in show.items():
        module = next(k for k in body if not k.startswith("__"))
        fun = next(x for x in body[module] if isinstance(x, str))
        args = {k: v for item in body[module] if isinstance(item, dict) for k, v in item.items() if k != "order"}
        result[sid] = (f"{module}.{fun}", args)
    return result


@pytest.mark.parametrize(
    ("family", "slurmd", "nfs", "defaults"),
    [
        ("Debian", ["slurmd"], ["nfs-common"], "/etc/default/slurmd"),
        ("RedHat", ["slurm-slurmd"], ["nfs-utils"], "/etc/sysconfig/slurmd"),
    ],
)
def test_both_os_families_render_and_apply(
    salt_stack: SaltStack, tmp_path: Path, scratch: Path, family: str, slurmd: list[str], nfs: list[str], defaults: str
) -> None:
    grains: dict[str, Any] = {"os_family": family, "os": "Debian" if family == "Debian" else "Rocky", "gpus": []}
    pillar = json.dumps(node_pillar(""))
    show = lowstate(salt_call(salt_stack, tmp_path, grains, "state.show_sls", "remotegpu", f"pillar={pillar}"))
    assert {sid.split("_")[1] for sid in show} >= {"user", "group", "gpu", "munge", "slurmd", "gemini", "exporter"}
    assert show["remotegpu_slurmd_package"] == ("pkg.installed", {"pkgs": slurmd, "refresh": False})
    assert show["remotegpu_mount_packages"][1]["pkgs"][0] == nfs[0]
    assert show["remotegpu_slurmd_defaults"][1]["name"] == defaults
    assert show["remotegpu_munge_key"][1]["contents_pillar"] == "remotegpu:munge:key_b64"
    assert MUNGE_KEY not in json.dumps(show)

    pillar = json.dumps(node_pillar(scratch))
    ret = salt_call(
        salt_stack, tmp_path, grains, "state.apply", "remotegpu.slurmd,remotegpu.exporter", f"pillar={pillar}"
    )
    assert all(s["result"] is True for s in ret.values()), ret
    assert (scratch / defaults.lstrip("/")).read_text() == SLURMD_DEFAULTS
    assert (scratch / "etc/slurm/gres.conf").read_text() == GRES
    assert (scratch / "etc/systemd/system/remotegpu-node-exporter.service").read_text() == UNIT


def test_gpu_state_is_guarded_by_grains(salt_stack: SaltStack, tmp_path: Path, scratch: Path) -> None:
    none = lowstate(salt_call(salt_stack, tmp_path, {"gpus": []}, "state.show_sls", "remotegpu.gpu"))
    assert list(none) == ["remotegpu_gpu_none"]
    assert "No NVIDIA GPU on this node" in none["remotegpu_gpu_none"][1]["text"]

    gpus = [{"vendor": "nvidia", "model": "H200"}, {"vendor": "intel", "model": "UHD 770"}]
    for family, driver in (("Debian", "nvidia-driver"), ("RedHat", "nvidia-driver")):
        show = lowstate(
            salt_call(
                salt_stack,
                tmp_path,
                {"gpus": gpus, "os_family": family},
                "state.show_sls",
                "remotegpu.gpu",
                f"pillar={json.dumps(node_pillar(''))}",
            )
        )
        assert show["remotegpu_gpu_found"][1]["text"] == "NVIDIA GPUs: H200"
        assert show["remotegpu_gpu_driver"][0] == "pkg.installed" and driver in show["remotegpu_gpu_driver"][1]["pkgs"]
        assert show["remotegpu_gpu_persistenced"][0] == "service.running"
    # a real run with a scratch root installs nothing: the driver steps are skipped with a notice
    ret = salt_call(
        salt_stack,
        tmp_path,
        {"gpus": gpus},
        "state.apply",
        "remotegpu.gpu",
        f"pillar={json.dumps(node_pillar(scratch))}",
    )
    assert all(s["result"] is True and not s["changes"] for s in ret.values())
    assert any("Skipped" in s["comment"] and "nvidia-driver" in s["comment"] for s in ret.values())

    # the dev minion's own grains: this machine's GPUs, whatever they are, apply cleanly
    states = by_id(apply(salt_stack, "remotegpu.gpu", node_pillar(scratch), test=False)["n1"])
    assert all(s["result"] is True and not s["changes"] for s in states.values())
    assert set(states) in (
        {"remotegpu_gpu_none"},
        {"remotegpu_gpu_found", "remotegpu_gpu_driver", "remotegpu_gpu_persistenced"},
    )
