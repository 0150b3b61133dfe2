"""Counting lists: bounded totals."""

from __future__ import annotations

import pytest

from gateway.db.paging import bounded
from gateway.schemas import COUNT_LIMIT

pytestmark = pytest.mark.unit


def test_bounded() -> None:
    assert bounded(None) == 0 and bounded(COUNT_LIMIT) == COUNT_LIMIT and bounded(COUNT_LIMIT + 1) is None
