"""Every manifest in examples/kubernetes validates against the Kubernetes JSON schemas.

``kubernetes-validate`` bundles the schemas (no network), and strict mode refuses fields the
API does not know, the usual typo. The checks below pin what the README promises about them.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

FOLDER = Path(__file__).resolve().parents[1] / "examples" / "kubernetes"
KUBERNETES_VERSION = "1.30"
MANIFESTS = sorted(FOLDER.glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_resources() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in documents(path)}


def test_the_manifest_folder_holds_the_expected_resources():
    assert {("Deployment", "triton"), ("Service", "triton-headless"), ("Deployment", "mlflow-triton-watch"),
            ("Deployment", "mlflow-triton-webhooks"), ("ConfigMap", "mlflow-triton-promotion")} <= set(all_resources())


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_validates_against_the_kubernetes_schema(path):
    docs = documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            location = "/".join(str(p) for p in err.path)
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} at {location}: {err.message}")


def test_strict_validation_catches_an_unknown_field():
    """The check above can fail: a typo in a Deployment is refused."""
    deployment = all_resources()[("Deployment", "mlflow-triton-watch")]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_triton_runs_in_explicit_mode_behind_a_headless_service():
    resources = all_resources()
    (triton,) = resources[("Deployment", "triton")]["spec"]["template"]["spec"]["containers"]
    assert "--model-control-mode=explicit" in triton["args"]
    assert any(arg.startswith("--model-repository=s3://") for arg in triton["args"])
    headless = resources[("Service", "triton-headless")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == resources[("Deployment", "triton")]["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", ["mlflow-triton-watch", "mlflow-triton-webhooks"])
def test_daemons_run_as_non_root_with_healthz_probes_and_secret_credentials(name):
    pod = all_resources()[("Deployment", name)]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert {"name": "s3-credentials"} in [ref.get("secretRef") for ref in container["envFrom"]]
    assert pod["serviceAccountName"] == "mlflow-triton"  # workload identity, as an alternative to keys
