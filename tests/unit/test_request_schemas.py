"""The document states what the gateway takes: a body the published JobCreate schema admits is one the gateway's
own checks (msgspec, then slurm.script.validate) take, and one it refuses they refuse, field by field and across
fields. What a schema cannot state (one number below another, a size in bytes) is named, not compared."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jobs.schemas import JobCreate, job_spec
from gateway.jobs.service import _GATEWAY_ID
from gateway.schemas import request_bodies
from slurm.script import DATASET_SLOTS, MODEL_SLOTS, REFERENCE, ScriptError, StageIn, StageInProgram, check_path, render
from tests.unit.test_job_spec import SAMPLES

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {"name": "j", "script": "true\n"}


@pytest.fixture(scope="module")
def admits() -> jsonschema_rs.Validator:
    schema = request_bodies([JobCreate])["JobCreate"]
    return jsonschema_rs.validator_for(schema)


UNSTATED = ("ranges run upwards", "the maximum node count is below the minimum", "--gpus-per-task used", "bytes")
"""slurm.script's refusals the schema does not state: one number below another (an array's range, a node
count), a size in UTF-8 bytes, and gpus_per_task's rule, stated in words only (see JobCreate)."""


def takes(body: dict[str, Any]) -> bool | None:
    """Whether the gateway takes the body up to Slurm, as JobService._prepare checks it (with every gateway job
    id in ``dependency`` and every dataset reference known: which are is the workspace's state); None: refused
    for an UNSTATED rule."""
    try:
        data = msgspec.convert(body, JobCreate)
        if data.dependency is not None:
            data = msgspec.structs.replace(data, dependency=_GATEWAY_ID.sub("7", data.dependency))
        work_dir = data.work_dir or "/home/u"
        check_path("work_dir", work_dir)
        spec = job_spec(data, work_dir)
        resolved = [  # every dataset/model reference known (which exist is the workspace's state)
            StageIn(slot=slots[i][0], reference=ref, version_id=1)
            for field, slots in (("datasets", DATASET_SLOTS), ("models", MODEL_SLOTS))
            for i, ref in enumerate(getattr(spec, field)[:3])
            if REFERENCE.fullmatch(ref)
        ]
        spec = msgspec.structs.replace(spec, stage_in=resolved)
        render(spec, container_runtime="pyxis", stage_in=StageInProgram("/opt/remotegpu-stage-in", "http://gw"))
    except msgspec.ValidationError:
        return False
    except ScriptError as exc:
        return None if any(rule in exc.message for rule in UNSTATED) else False
    return True


def judged_alike(admits: jsonschema_rs.Validator, body: dict[str, Any]) -> bool:
    """The schema admits the body exactly when the gateway takes it (or admits it, refused for an UNSTATED rule)."""
    verdict = takes(body)
    return admits.is_valid(body) == (True if verdict is None else verdict)


ALPHABET = "aAzZ09_-.,:;/@%+=~?*!^&|#$()[]{}<> \t\n\x00\x1f\x7f\u00e9SLBRgpu"
STRING_FIELDS = sorted(
    name
    for name, (value, _) in SAMPLES.items()
    if isinstance(value, str) and name not in ("script",)  # script: any text without NUL, below
)


def _near(sample: str) -> st.SearchStrategy[str]:
    """The sample, and strings one edit away from it (a character put in, taken out or changed)."""
    spots = st.integers(0, len(sample))
    chars = st.sampled_from(ALPHABET)
    return st.one_of(
        st.just(sample),
        st.builds(lambda i, c: sample[:i] + c + sample[i:], spots, chars),
        st.builds(lambda i: sample[:i] + sample[i + 1 :], spots),
        st.builds(lambda i, c: sample[:i] + c + sample[i + 1 :], spots, chars),
    )


@settings(max_examples=3000, deadline=None)
@given(
    field=st.sampled_from(STRING_FIELDS),
    data=st.data(),
)
def test_each_field_is_admitted_exactly_when_taken(
    admits: jsonschema_rs.Validator, field: str, data: st.DataObject
) -> None:
    sample, needs = SAMPLES[field]
    value = data.draw(st.one_of(_near(sample), st.text(ALPHABET, max_size=12)), label="value")
    body = {k: v for k, v in {**BASE, **needs, field: value}.items() if v is not None}
    assert judged_alike(admits, body), body


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.dictionaries(st.text(ALPHABET, max_size=8), st.text(ALPHABET, max_size=4), max_size=3),
        st.dictionaries(
            st.sampled_from(["SLURM_X", "SLURMD_X", "MASTER_PORT", "MASTER_PORTS", "NODE_RANK", "A1"]), st.just("v")
        ),
    ),
    field=st.sampled_from(["env", "environment"]),
)
def test_variable_names_and_values_are_admitted_exactly_when_taken(
    admits: jsonschema_rs.Validator, value: dict[str, str], field: str
) -> None:
    body = {**BASE, field: value}
    assert judged_alike(admits, body), body


@settings(max_examples=500, deadline=None)
@given(paths=st.lists(st.one_of(_near("/data/a"), _near("/d/b/"), st.text("/.a\x00", max_size=6)), max_size=4))
def test_mounts_are_admitted_exactly_when_taken(admits: jsonschema_rs.Validator, paths: list[str]) -> None:
    for field in ("datasets", "models"):
        body = {**BASE, field: paths}
        assert judged_alike(admits, body), body
    for field in ("code_dir", "output_dir"):
        for path in paths:
            body = {**BASE, field: path}
            assert judged_alike(admits, body), body


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"script": None},  # neither
        {"command": ["true"]},  # both
        {"script": None, "command": ["true"]},
        {"script": None, "command": []},
        {"script": None, "command": ["a\x00"]},
        {"script": "a\x00"},
        {"script": None, "command": ["x"], "script_args": ["1"]},
        {"script_args": ["1"]},
        {"script_args": ["\x00"]},
        {"launch": "torchrun"},
        {"script": None, "command": ["x.py"], "launch": "torchrun"},
        {"script": None, "command": ["x.py"], "launch": "torchrun", "nproc_per_node": 2},
        {"nproc_per_node": 2},
        {"nproc_per_node": None},
        {"mem_mib": 1},
        {"mem_mib": 1, "mem_per_cpu_mib": 1},
        {"mem_mib": 1, "mem_per_gpu_mib": 1},
        {"mem_per_cpu_mib": 1, "mem_per_gpu_mib": 1},
        {"mem_mib": 1, "mem_per_cpu_mib": None, "mem_per_gpu_mib": None},
        {"gpus_per_task": 1, "gpus": 1},
        {"gpus_per_task": 1, "ntasks": 2},
        {"gpus_per_task": 1, "ntasks_per_node": 2},
        {"gres": ["gpu:1"]},
        {"gres": ["gpus:1"]},
        {"gres": ["nvme:a:1"]},
        {"datasets": ["/a", "/b", "/c", "/d"]},
        {"export": "none"},
        {"export": "NONE,A"},
        {"export": "all,A=1"},
        {"export": "Nonesuch"},
        {"dependency": "afterok:" + "a" * 32},
        {"dependency": "afterok:" + "A" * 32},
        {"work_dir": ""},
        {"work_dir": "/"},
        {"stdout": "a/../b"},
        {"stdout": "a/..b"},
    ],
)
def test_fields_together_are_admitted_exactly_when_taken(
    admits: jsonschema_rs.Validator, fields: dict[str, Any]
) -> None:
    body = {k: v for k, v in {**BASE, **fields}.items() if v is not None or k not in BASE}
    assert judged_alike(admits, body), body


@pytest.mark.parametrize(
    "fields",
    [
        {"nodes": 3, "max_nodes": 2},  # one number below another
        {"gpus_per_task": 1},  # stated in words only (see JobCreate.json_schema_rules)
        {"gpus_per_task": 1, "ntasks": None},
        {"array": "5-3"},  # a range downwards
        {"array": "0-3:0"},  # a step of 0
        {"script": "é" * (1024 * 1024 // 2 + 1)},  # more bytes than characters
    ],
)
def test_what_the_schema_cannot_state_is_refused_by_the_gateway(
    admits: jsonschema_rs.Validator, fields: dict[str, Any]
) -> None:
    body = {**BASE, **fields}
    assert admits.is_valid(body) and takes(body) is None
