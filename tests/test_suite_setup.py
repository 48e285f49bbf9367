"""The test suite's own machinery: what the README's test command relies on."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("suite_setup")


def test_xdist_groups_reach_the_scheduler(request: pytest.FixtureRequest) -> None:
    # `--dist loadgroup` keeps each xdist_group on one worker (one MLflow server, one Orthanc, one Ray at a
    # time, module fixtures built once). pytest-xdist 3.8 marks a group by appending "@name" to the node
    # id, which pytest 9 no longer lets it change: the groups were silently spread over both workers
    # (two Ray runtimes at once, the tracked bundle run trained twice). pyproject pins pytest < 9.
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run with --dist loadgroup (make test uses it)")
    assert request.node.nodeid.endswith("@suite_setup")
