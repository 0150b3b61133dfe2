"""Pure readings of what Salt returns: a minion's ``state.apply`` return (per-state results or the error it gave
instead), and the GPUs of its ``gpus`` grain. No I/O; unit-tested against recorded salt-api answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

_SEP = "_|-"


class StateOutcome(msgspec.Struct, frozen=True, kw_only=True):
    state_id: str
    sls: str | None
    function: str
    name: str
    result: bool | None
    changed: bool
    comment: str
    changes: dict[str, Any]
    duration_ms: float | None
    run_num: int


class MinionOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One minion's answer: its states in run order, or ``error`` when Salt ran none (a render failure, an SLS
    that does not exist, a minion that did not return)."""

    states: list[StateOutcome]
    retcode: int | None
    error: str | None

    @property
    def failed(self) -> int:
        return sum(1 for s in self.states if s.result is False)

    @property
    def changed(self) -> int:
        return sum(1 for s in self.states if s.changed)

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0 and (self.retcode in (None, 0))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\n".join(_text(v) for v in value)
    return str(value)


def _duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):  # older Salt: "4.085 ms"
        found = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", value)
        return float(found[1]) if found else None
    return None


def _state(key: str, value: Mapping[str, Any]) -> StateOutcome:
    parts = key.split(_SEP)
    module, fun = (parts[0], parts[-1]) if len(parts) >= 4 else ("", "")
    state_id = str(value.get("__id__") or (parts[1] if len(parts) >= 4 else key))
    name = value.get("name")
    if name is None:
        name = _SEP.join(parts[2:-1]) if len(parts) >= 4 else ""
    result = value.get("result")
    changes = value.get("changes")
    changes = dict(changes) if isinstance(changes, Mapping) else {}
    run_num = value.get("__run_num__")
    return StateOutcome(
        state_id=state_id,
        sls=str(value["__sls__"]) if value.get("__sls__") is not None else None,
        function=f"{module}.{fun}" if module else "",
        name=_text(name),
        result=result if isinstance(result, bool) else None,
        changed=bool(changes),
        comment=_text(value.get("comment")),
        changes=changes,
        duration_ms=_duration(value.get("duration")),
        run_num=run_num if isinstance(run_num, int) and not isinstance(run_num, bool) else 0,
    )


def minion_outcome(ret: Any, retcode: Any = None) -> MinionOutcome:
    """What one minion's ``state.apply`` returned: a dict of states (``mod_|-id_|-name_|-fun`` keys), or a list
    of error strings (e.g. ``Rendering SLS ... failed``), or a string (``Minion did not return``)."""
    code = retcode if isinstance(retcode, int) and not isinstance(retcode, bool) else None
    if isinstance(ret, Mapping) and ret and all(isinstance(v, Mapping) for v in ret.values()):
        states = sorted((_state(str(k), v) for k, v in ret.items()), key=lambda s: (s.run_num, s.state_id))
        return MinionOutcome(states=states, retcode=code, error=None)
    if isinstance(ret, Mapping) and not ret:
        return MinionOutcome(states=[], retcode=code, error="Salt returned no states (nothing matched the SLS)")
    text = _text(ret).strip() or "Salt returned nothing"
    return MinionOutcome(states=[], retcode=code if code is not None else 1, error=text[:4000])


def job_returns(job: Mapping[str, Any]) -> dict[str, MinionOutcome]:
    """The minions that have returned, from salt-api's ``GET /jobs/<jid>`` answer: ``info[0].Result`` holds
    ``{minion: {return, retcode, success}}`` (``return[0]`` the same returns without their codes)."""
    info = job.get("info")
    found: dict[str, MinionOutcome] = {}
    if isinstance(info, list) and info and isinstance(info[0], Mapping):
        result = info[0].get("Result")
        if isinstance(result, Mapping):
            for minion, answer in result.items():
                if isinstance(answer, Mapping) and "return" in answer:
                    found[str(minion)] = minion_outcome(answer["return"], answer.get("retcode"))
    returned = job.get("return")
    if isinstance(returned, list) and returned and isinstance(returned[0], Mapping):
        for minion, answer in returned[0].items():
            if str(minion) not in found:
                found[str(minion)] = minion_outcome(answer)
    return found


def job_minions(job: Mapping[str, Any]) -> list[str] | None:
    """The minions the job was sent to (``info[0].Minions``); None when salt-api does not know the job."""
    info = job.get("info")
    if isinstance(info, list) and info and isinstance(info[0], Mapping):
        minions = info[0].get("Minions")
        if isinstance(minions, list):
            return [str(m) for m in minions]
    return None


_MODEL = re.compile(r"\b([a-z]{1,3}[0-9]{2,4}[a-z]{0,2})\b")
_CHIP = re.compile(r"^g[a-z]?[0-9]{3}[a-z]?$")  # GA100, GH100, TU104: the die, not the product


def detected_gpus(grain: Any) -> tuple[str | None, int]:
    """The NVIDIA GPUs of a node's ``gpus`` grain (``[{"vendor": "nvidia", "model": "GA100 [A100 PCIe 40GB]"}]``):
    (type, count). The type is the product's short name (``a100``) when every GPU names the same one."""
    if not isinstance(grain, list):
        return None, 0
    names: set[str | None] = set()
    count = 0
    for gpu in grain:
        if not isinstance(gpu, Mapping) or str(gpu.get("vendor", "")).lower() != "nvidia":
            continue
        count += 1
        model = str(gpu.get("model", "")).lower()
        inside = re.search(r"\[([^\]]*)\]", model)
        words = [w for w in _MODEL.findall(inside[1] if inside else model) if not _CHIP.match(w)]
        names.add(words[0] if words else None)
    kind = next(iter(names)) if len(names) == 1 else None
    return kind, count
