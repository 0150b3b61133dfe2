"""Reading salt-api's answers (recorded from a real Salt 3008.3 master: samples/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.nodes.salt_results import detected_gpus, job_minions, job_returns, minion_outcome

SAMPLES = Path(__file__).parent / "samples"


def _sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def test_a_jobs_lookup_gives_each_minions_states_in_run_order() -> None:
    job = _sample("api-job.json")
    assert job_minions(job) == ["gpu-node-01"]
    outcome = job_returns(job)["gpu-node-01"]
    assert outcome.error is None and outcome.retcode == 0
    assert [s.run_num for s in outcome.states] == sorted(s.run_num for s in outcome.states)
    first = outcome.states[0]
    assert (first.state_id, first.sls, first.function) == ("slurm_conf_dir", "gpu_node.files", "file.directory")
    assert first.result is True and first.changed is False and first.duration_ms == 4.085
    pkg = next(s for s in outcome.states if s.state_id == "gpu_packages")
    # a dry run's pending change: Salt's null result, with the changes it would make
    assert pkg.result is None and pkg.changed and "nfs-common" in pkg.changes
    assert pkg.comment.startswith("The following packages would be installed")
    assert outcome.ok and outcome.failed == 0 and outcome.changed >= 1


def test_a_local_answer_with_a_diff() -> None:
    answer = _sample("api-state-pillar-override.json")["return"][0]["gpu-node-01"]
    outcome = minion_outcome(answer)
    gres = next(s for s in outcome.states if s.state_id == "gres_conf")
    assert gres.result is None and gres.changed and "Type=h100" in gres.changes["diff"]
    assert gres.name.endswith("/etc/slurm/gres.conf")


def test_a_job_not_returned_yet_has_no_outcome() -> None:
    job = {"info": [{"jid": "1", "Minions": ["n1", "n2"], "Result": {}}], "return": [{}]}
    assert job_returns(job) == {} and job_minions(job) == ["n1", "n2"]
    assert job_minions({"info": [], "return": []}) is None


def test_render_errors_fail_the_minion() -> None:
    job = {
        "info": [{"Minions": ["n1"], "Result": {"n1": {"return": ["Rendering SLS 'base:remotegpu.x' failed"],
                                                        "retcode": 1, "success": False}}}],
        "return": [{"n1": ["Rendering SLS 'base:remotegpu.x' failed"]}],
    }  # fmt: skip
    outcome = job_returns(job)["n1"]
    assert not outcome.ok and outcome.retcode == 1 and outcome.states == []
    assert outcome.error == "Rendering SLS 'base:remotegpu.x' failed"


def test_a_failed_state_fails_the_minion() -> None:
    ret = {
        "file_|-a_|-/x_|-managed": {"result": False, "comment": ["no", "way"], "changes": {}, "__run_num__": 1,
                                    "__sls__": "remotegpu.munge", "__id__": "a", "duration": "3.5 ms"},
        "test_|-b_|-b_|-succeed_without_changes": {"result": True, "comment": "", "changes": {}, "__run_num__": 0},
    }  # fmt: skip
    outcome = minion_outcome(ret, 2)
    assert [s.state_id for s in outcome.states] == ["b", "a"]
    assert outcome.states[1].comment == "no\nway" and outcome.states[1].duration_ms == 3.5
    assert outcome.states[0].function == "test.succeed_without_changes" and outcome.states[0].name == "b"
    assert outcome.failed == 1 and not outcome.ok


def test_nothing_or_a_string_is_an_error() -> None:
    assert minion_outcome({}).error and not minion_outcome({}).ok
    assert minion_outcome("Minion did not return. [No response]").error == "Minion did not return. [No response]"


def test_detected_gpus_from_the_gpus_grain() -> None:
    grain = [
        {"vendor": "nvidia", "model": "GA100 [A100 PCIe 40GB]"},
        {"vendor": "nvidia", "model": "GA100 [A100 PCIe 40GB]"},
        {"vendor": "intel", "model": "HD Graphics 630"},
    ]
    assert detected_gpus(grain) == ("a100", 2)
    assert detected_gpus([{"vendor": "nvidia", "model": "GH100 [H100 SXM5 80GB]"}]) == ("h100", 1)
    mixed = [
        {"vendor": "nvidia", "model": "GA100 [A100 PCIe 40GB]"},
        {"vendor": "nvidia", "model": "TU104GL [Tesla T4]"},
    ]
    assert detected_gpus(mixed) == (None, 2)
    assert detected_gpus([]) == (None, 0) and detected_gpus(None) == (None, 0)
