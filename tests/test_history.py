"""Unit tests: the serving history's answers (rollback target, never-reused numbers)."""

from __future__ import annotations

from mlflow_triton.repository.history import ServingHistory
from mlflow_triton.repository.local_store import LocalStore


def history(*events: tuple) -> ServingHistory:
    result = ServingHistory("m")
    for event, version, via, *details in events:
        result.record(event, version, via, **(details[0] if details else {}))
    return result


def test_previous_good_is_kubectl_rollout_undo():
    h = history(("serving", 1, "publish"), ("serving", 2, "publish"))
    assert h.previous_good(2) == 1
    h.record("serving", 1, "rollback", rolled_back_from=2)
    h.record("serving", 3, "publish")
    assert h.previous_good(3) == 1  # not 2: it was rolled back from
    assert h.previous_good(3, available=[3]) is None  # 1 no longer in the repository


def test_a_version_refused_at_publish_is_never_a_target_but_a_failed_rollback_is_not_a_verdict():
    h = history(("serving", 1, "publish"), ("serving", 2, "publish"), ("refused", 3, "publish"))
    assert h.previous_good(2) == 1 and 3 in h.refused(via="publish")
    h.record("refused", 1, "rollback", reason="a replica ran out of memory")
    assert h.previous_good(2) == 1  # it served well: still the rollback target
    assert h.highest_version() == 3  # the refused number is never reused


def test_history_round_trips_through_the_store(tmp_path):
    store = LocalStore(tmp_path)
    h = history(("serving", 1, "publish", {"verified": True, "previous": None}))
    h.save(store)
    loaded = ServingHistory.load(store, "m")
    assert loaded.events == h.events and loaded.served() == {1}
    assert "previous" not in loaded.events[0]  # None details are not written
    assert ServingHistory.load(store, "other").events == []
