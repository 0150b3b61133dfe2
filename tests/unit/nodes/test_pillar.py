"""The pillar a provision run sends (salt-contract), from the gateway's inventory."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.nodes import pillar
from gateway.nodes.pillar import NodeFacts, PillarError, PosixUser

NODE = NodeFacts(name="n1", region="dc-1", gpu_type="a100", gpu_count=2, gpu_detect=False)
KEY = bytes(range(256)) * 4


def test_the_generated_pillar_follows_the_contract() -> None:
    users = [PosixUser(name="bob"), PosixUser(name="alice", uid=20001, gid=20001), PosixUser(name="daemon", uid=1)]
    got = pillar.build(NODE, root="/scratch/n1", munge_key=KEY, users=users, cluster="remotegpu", users_gid=20000)
    rg = got["remotegpu"]
    assert rg["root"] == "/scratch/n1"
    assert rg["node"] == {"name": "n1", "region": "dc-1", "gpus": [{"type": "a100", "count": 2}],
                          "gres_autodetect": "off"}  # fmt: skip
    assert base64.b64decode(rg["munge"]["key_b64"]) == KEY
    assert rg["slurm"] == {"cluster": "remotegpu"}
    # sorted, system accounts left out, ids only where known
    assert rg["users"] == [
        {"name": "alice", "groups": ["remotegpu"], "uid": 20001, "gid": 20001},
        {"name": "bob", "groups": ["remotegpu"]},
    ]
    assert rg["groups"] == [{"name": "remotegpu", "gid": 20000}]


def test_no_root_no_key_no_gpus() -> None:
    bare = NodeFacts(name="n2", region="default", gpu_type=None, gpu_count=0, gpu_detect=False)
    rg = pillar.build(bare, root="", munge_key=None, users=[], cluster=None)["remotegpu"]
    assert "root" not in rg and "munge" not in rg and "slurm" not in rg  # the minion's own pillar decides
    assert rg["node"]["gpus"] == [] and rg["users"] == []


def test_detected_gpus_ask_for_nvml_autodetect() -> None:
    found = NodeFacts(name="n1", region="r", gpu_type="h100", gpu_count=8, gpu_detect=True)
    assert (
        pillar.build(found, root="", munge_key=None, users=[], cluster=None)["remotegpu"]["node"]["gres_autodetect"]
        == "nvml"
    )


def test_site_pillar_lies_under_the_generated_one() -> None:
    mounts = [{"kind": "nfs", "source": "a:/b", "target": "/gemini/code"}]
    site = {"remotegpu": {"slurm": {"controller": "ctl01", "cluster": "site"}, "node": {"region": "x"},
                          "gemini": {"mounts": mounts}}}  # fmt: skip
    rg = pillar.build(NODE, root="", munge_key=None, users=[], cluster="remotegpu", site=site)["remotegpu"]
    assert rg["slurm"] == {"controller": "ctl01", "cluster": "remotegpu"}
    assert rg["node"]["region"] == "dc-1" and rg["gemini"]["mounts"][0]["source"] == "a:/b"


def test_reading_the_munge_key_names_the_file_only(tmp_path: Path) -> None:
    key = tmp_path / "munge.key"
    with pytest.raises(PillarError, match=r"cannot read the munge key at .*munge\.key"):
        pillar.read_munge_key(str(key))
    key.write_bytes(b"short-secret")
    with pytest.raises(PillarError) as short:
        pillar.read_munge_key(str(key))
    assert "short-secret" not in str(short.value)
    key.write_bytes(KEY)
    assert pillar.read_munge_key(str(key)) == KEY


def test_site_file(tmp_path: Path) -> None:
    assert pillar.read_site(None) == {}
    site = tmp_path / "site.toml"
    site.write_text('[remotegpu.slurm]\ncontroller = "ctl01"\n')
    assert pillar.read_site(str(site)) == {"remotegpu": {"slurm": {"controller": "ctl01"}}}
    site.write_text("not = [toml")
    with pytest.raises(PillarError, match="not valid TOML"):
        pillar.read_site(str(site))
