import pytest

from slurm.reasons import explain

pytestmark = pytest.mark.unit


def test_quota_reasons_are_explained() -> None:
    assert "GPU quota (GrpTRES gres/gpu)" in (explain("AssocGrpGRES") or "")
    assert "overdue" in (explain("AssocGrpCpuLimit") or "")
    assert explain("Resources") and explain("Priority")


def test_nothing_to_explain() -> None:
    assert explain(None) is None and explain("None") is None and explain("SomethingNewInSlurm25") is None
