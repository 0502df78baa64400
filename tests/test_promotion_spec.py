"""Unit tests: promotion specs, reports and the watch loop (no stack, no network)."""

from __future__ import annotations

import re
import threading

import pytest
from mlflow.exceptions import MlflowException

from mlflow_triton import promotion
from mlflow_triton.promotion import ModelReport, PromotionSpec, SyncReport, load_spec, watch

SPEC = """
alias: production
repository: s3://models/triton
triton: [http://t1:8000, http://t2:8000]
config: {instance_kind: cpu, max_batch_size: 16}
models:
  - registered_model: fraud
    deployment: fraud-detector
    alias: champion
    config: {max_batch_size: 8}
  - registered_model: churn
"""


@pytest.fixture(autouse=True)
def no_stack_env(monkeypatch):
    for key in ("TRITON_URL", "TRITON_MODEL_REPO"):
        monkeypatch.delenv(key, raising=False)


def write(tmp_path, text: str):
    path = tmp_path / "promotion.yaml"
    path.write_text(text)
    return path


def test_yaml_spec_defaults_and_per_model_overrides(tmp_path):
    spec = load_spec(write(tmp_path, SPEC))

    fraud, churn = spec.models
    assert spec.triton_urls == ("http://t1:8000", "http://t2:8000")
    assert (fraud.registered_model, fraud.deployment, fraud.alias) == ("fraud", "fraud-detector", "champion")
    assert (churn.deployment, churn.alias) == ("churn", "production")
    assert fraud.config.max_batch_size == 8 and churn.config.max_batch_size == 16
    assert fraud.config.model_repository == churn.config.model_repository == "s3://models/triton"
    assert fraud.config.instance_kind == "cpu" and spec.smoke_test is True
    assert spec.config_for("fraud-detector") is fraud.config and spec.config_for("other") == spec.defaults
    assert PromotionSpec.from_yaml(write(tmp_path, SPEC)) == spec


def test_flags_select_and_override_the_file(tmp_path):
    spec = load_spec(
        write(tmp_path, SPEC), models=["fraud=fraud-v2"], alias="staging",
        triton="http://t3:8000", config={"max_batch_size": "4"}, smoke_test=False,
    )  # fmt: skip
    (fraud,) = spec.models
    assert (fraud.deployment, fraud.alias, fraud.config.max_batch_size) == ("fraud-v2", "staging", 4)
    assert spec.triton_urls == ("http://t3:8000",) and spec.smoke_test is False


def test_flags_alone_define_the_models():
    spec = load_spec(models=["fraud", "churn=churn-model"], repository="s3://b/p", triton="http://t1:8000")
    assert [(m.registered_model, m.deployment, m.alias) for m in spec.models] == [
        ("fraud", "fraud", "production"), ("churn", "churn-model", "production"),
    ]  # fmt: skip
    assert spec.select("churn").models == spec.models[1:]
    assert spec.select("fraud", alias="staging").models == ()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"models": ["fraud"], "colour": "red"}, "Unknown key(s) ['colour'] in the promotion spec"),
        ({"models": [{"registered_model": "fraud", "stage": "x"}]}, "Unknown key(s) ['stage'] in the models entry"),
        ({"models": [{"deployment": "fraud"}]}, "needs 'registered_model'"),
        ({"models": ["fraud", {"registered_model": "f2", "deployment": "fraud"}]}, "fed by both"),
        ({"models": [{"registered_model": "a b"}]}, "Invalid deployment name"),
        ({"models": ["fraud"], "config": {"max_batch_size": "many"}}, "expects int"),
        ({"models": ["fraud"], "triton": "not-a-url"}, "Invalid Triton URL"),
        ({"models": ["fraud"], "smoke_test": "no"}, "smoke_test must be true or false"),
        ({"models": []}, "names no model"),
        ({"models": "fraud"}, "must be a list"),
    ],
)
def test_invalid_specs_are_refused_before_any_work(data, message):
    data = {"repository": "s3://b/p", "triton": "http://t1:8000", **data}
    with pytest.raises(MlflowException, match=re.escape(message)) as err:
        PromotionSpec.from_dict(data)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_missing_repository_and_unknown_model_flag(tmp_path):
    with pytest.raises(MlflowException, match="No model repository configured"):
        load_spec(models=["fraud"], triton="http://t1:8000")
    with pytest.raises(MlflowException, match=r"--model \['nope'\] not in the spec"):
        load_spec(write(tmp_path, SPEC), models=["nope"])
    with pytest.raises(MlflowException, match="Cannot read the promotion spec"):
        load_spec(write(tmp_path, "models: [unclosed"))
    assert load_spec(repository="s3://b/p", triton="http://t1:8000", require_models=False).models == ()


def test_reports_describe_each_action():
    published = ModelReport("fraud", "production", "fraud", "published", "2", "1", 4, 3, 0, 873, seconds=5.0)
    unchanged = ModelReport("churn", "production", "churn", "unchanged", "7", "7", 2, 2)
    failed = ModelReport("x", "production", "x", "failed", error="boom")
    report = SyncReport([published, unchanged])
    assert report.ok and report.changed
    assert "published registry version 2 as Triton version 4 (was registry 1, Triton 3" in published.describe()
    assert "unchanged (registry version 7 serves as Triton version 2)" in unchanged.describe()
    assert not SyncReport([unchanged, failed]).ok and SyncReport([failed]).failures == [failed]
    assert SyncReport([failed]).to_dict()["models"][0]["error"] == "boom"


def test_watch_runs_rounds_until_stopped(monkeypatch):
    spec = load_spec(models=["fraud"], repository="s3://b/p", triton="http://t1:8000")
    stop = threading.Event()
    rounds: list[SyncReport] = []

    def fake_sync(s):
        assert s is spec
        return SyncReport([ModelReport("fraud", "production", "fraud", "unchanged")])

    def on_report(report):
        rounds.append(report)
        if len(rounds) == 3:
            stop.set()  # as SIGTERM does: the round in progress completes, no new one starts

    monkeypatch.setattr(promotion, "sync", fake_sync)
    last = watch(spec, interval_s=0.01, stop_event=stop, on_report=on_report)
    assert len(rounds) == 3 and last is rounds[-1]
    assert watch(spec, interval_s=0.01, max_rounds=2) is not None
    stop.set()
    assert watch(spec, interval_s=0.01, stop_event=stop) is None
    with pytest.raises(MlflowException, match="interval must be > 0"):
        watch(spec, interval_s=0)
