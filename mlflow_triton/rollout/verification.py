"""Verification of a candidate version before any client sees it.

A rollout (:mod:`mlflow_triton.rollout.switch`) loads the candidate on every replica under a
staging model name that no client uses, then calls a :data:`Verifier` with a
:class:`Candidate`. The default verifier, :class:`SmokeTest`, sends the smoke inputs
(:mod:`mlflow_triton.rollout.smoke_inputs`: golden cases, the input example, or zeros) to every
replica and checks every answer against the served config (each output present, shaped as
declared, finite), then compares it with a reference:

- golden outputs logged with the model: no local runtime and no model file needed;
- else the same file run locally by its flavor's runtime (onnxruntime, ``torch.jit``), when
  the flavor has one and it is installed;
- else nothing more (a warning says so).

Raising refuses the candidate: the deployment keeps serving what it served. Every comparison is
:func:`mlflow_triton.core.tolerance.compare_outputs`. Model files are streamed from the
repository to a temporary folder, never read into memory.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE

from mlflow_triton.core.golden import GoldenCases
from mlflow_triton.core.tolerance import compare_outputs
from mlflow_triton.flavors.base import Flavor
from mlflow_triton.flavors.registry import get as get_flavor
from mlflow_triton.flavors.registry import resolve_model
from mlflow_triton.fleet.errors import raise_failures
from mlflow_triton.repository.concurrency import in_background
from mlflow_triton.repository.layout import version_prefix
from mlflow_triton.repository.provenance import Provenance
from mlflow_triton.repository.references import file_digest, load_reference
from mlflow_triton.rollout.reference_run import run_reference
from mlflow_triton.rollout.smoke_inputs import (
    SmokeCase,
    SmokeInputs,
    derive_smoke_inputs,
    golden_inputs,
)
from mlflow_triton.triton_config.model_config import parse_pbtxt
from mlflow_triton.triton_config.tensors import io_from_config, per_sample_scalars

if TYPE_CHECKING:
    from mlflow_triton.fleet.server import TritonCluster
    from mlflow_triton.repository.store import ModelRepositoryStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A version loaded for verification, not yet visible to clients.

    Attributes:
        deployment: the model name clients use.
        model: the Triton model name to query (the staging name).
        version: the repository version.
        urls: the replicas that loaded it.
        provenance: the version's provenance.
        model_file: a local copy of the served file (its companions beside it), if the
            publisher has one; else the verifier streams it from the repository.
    """

    deployment: str
    model: str
    version: int
    urls: tuple[str, ...]
    provenance: Provenance
    model_file: Path | None = None


#: Called once the candidate is READY on every replica; raise to refuse it.
Verifier = Callable[[Candidate], None]


class VerificationUnavailable(MlflowException):
    """Verification could not run (the repository, MLflow or the local runtime failed), which
    says nothing about the model: the candidate is not refused, and a retry may pass
    (TEMPORARILY_UNAVAILABLE)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=TEMPORARILY_UNAVAILABLE)


def runtime_available(flavor: Flavor) -> bool:
    """True when the flavor has a local runtime and it is importable."""
    if flavor.reference_runtime is None:
        return False
    try:
        return importlib.util.find_spec(flavor.reference_runtime) is not None
    except (ImportError, ValueError):  # blocked by an import hook, or a broken install
        return False


class SmokeTest:
    """Send the smoke inputs to every replica; check and compare the answers.

    Args:
        store: the repository (to stream the version's files when no local copy is given).
        cluster: the replicas (protocol, timeouts).
        flavor: the version's flavor (its local runtime is the reference without golden cases).
        inputs: the smoke inputs (:func:`~mlflow_triton.rollout.smoke_inputs.derive_smoke_inputs`).
        compare: run the model locally as the reference. ``None``: when the flavor's runtime is
            installed; ``True`` requires it. Ignored with golden cases (they are the reference).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE at construction when ``compare=True`` and
            the local runtime is missing, before anything is published.
    """

    def __init__(
        self, store: "ModelRepositoryStore", cluster: "TritonCluster", flavor: Flavor, inputs: SmokeInputs,
        compare: bool | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.cluster = cluster
        self.flavor = flavor
        self.inputs = inputs
        available = runtime_available(flavor)
        if compare and not available and inputs.origin != "golden":
            raise MlflowException.invalid_parameter_value(
                f"Verification runs {flavor.name} models locally with {flavor.reference_runtime}, which "
                "is not installed: pip install 'mlflow-triton[local]', or disable it "
                "(-C verify=false, --no-smoke-test)."
            )
        self.compare = inputs.origin != "golden" and (available if compare is None else compare)
        self._reference: Future | None = None
        self._expected: list[dict[str, np.ndarray] | None] | None = None

    @classmethod
    def for_version(
        cls, store: "ModelRepositoryStore", cluster: "TritonCluster", provenance: Provenance,
        compare: bool | None = None,
    ) -> "SmokeTest":  # fmt: skip
        """A smoke test for a version already in the repository (rollback, reload): against the
        reference outputs stored beside it when it was published
        (:mod:`mlflow_triton.repository.references`), else fed with the golden cases or input
        example of the MLflow model its provenance names, or zeros shaped by its config.

        Raises:
            MlflowException: when that MLflow model cannot be read (the message says how to
                skip verification).
        """
        flavor = get_flavor(provenance.flavor)
        config = parse_pbtxt(provenance.config_pbtxt)
        stored = load_reference(store, provenance.name, provenance.version, file_digest(provenance.files[0]))
        if stored is not None:  # computed when it was published: no runtime, no MLflow, no model bytes
            return cls(store, cluster, flavor, golden_inputs(stored, config.max_batch_size), compare)
        model = None
        # The registry version that was published, never its alias resolved again: an alias
        # may point at another version (with other inputs) by now.
        model_uri = provenance.registry_uri
        if model_uri:
            try:
                source = resolve_model(model_uri, flavor.name)
            except MlflowException as err:
                raise MlflowException(
                    f"Cannot read {model_uri} for verification ({err.message}); retry with "
                    "--no-smoke-test if MLflow is unreachable.",
                    error_code=err.error_code,
                ) from err
            # A part of the logged model (an ensemble step) has no examples of its own.
            own = provenance.source_uri in (None, "", source.artifact_uri)
            model = source.model if own else source.model.part()
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-golden-") as tmp:
            inputs = derive_smoke_inputs(model, io_from_config(config), config.max_batch_size, Path(tmp))
        return cls(store, cluster, flavor, inputs, compare)

    @property
    def needs_model_file(self) -> bool:
        """Whether it runs the model locally: a publisher that streams the file then keeps a
        local copy in the same pass instead of fetching it again."""
        return self.compare

    @property
    def reference(self) -> str:
        """What the answers are compared with: ``golden``, ``local`` or ``answers`` (none)."""
        return "golden" if self.inputs.origin == "golden" else "local" if self.compare else "answers"

    def __call__(self, candidate: Candidate) -> None:
        config = parse_pbtxt(candidate.provenance.config_pbtxt)
        if self.reference == "answers" and self.flavor.reference_runtime:
            logger.warning(
                "Verification of %s models checks that Triton answers; install %s to also compare "
                "the answers with the model run locally (or log golden outputs with the model).",
                self.flavor.name, self.flavor.reference_runtime,
            )  # fmt: skip
        expected = self._expected = self._expected_outputs(candidate)
        failures: dict[str, Exception | None] = {}
        for url in candidate.urls:
            try:
                with self.cluster.server(url) as server:
                    for index, case in enumerate(self.inputs.cases):
                        answer = self._infer(server, candidate, config, case)
                        self._check(index, answer, expected[index], config)
            except Exception as err:
                failures[url] = err
        raise_failures(f"verify {candidate.deployment!r} version {candidate.version}", failures)
        logger.info(
            "Verified %s version %d on %d replica(s) against %d %s case(s) (reference: %s)",
            candidate.deployment, candidate.version, len(candidate.urls), len(self.inputs.cases),
            self.inputs.origin.replace("_", " "), self.reference,
        )  # fmt: skip

    # -- the reference ---------------------------------------------------------------------------
    def start_reference(
        self, deployment: str, version: int, provenance: Provenance, model_file: Path | None = None,
        files_at: str | None = None,
    ) -> None:  # fmt: skip
        """Compute the reference outputs now, in the background (the local run, fetching the
        model file from the repository first when ``model_file`` is None), so that they are
        ready when the candidate is: a publisher calls this before the staging load. Without
        it, :meth:`__call__` computes them itself. Nothing to do without a local reference.

        Args:
            files_at: the folder that holds the version's files (default ``NAME/<version>/``;
                a new upload is in the staging folder until the rollout has built that one).
        """
        if self.reference != "local" or self._reference is not None:
            return
        folder = files_at or version_prefix(deployment, version)
        self._reference = in_background(
            self._run_cases, deployment, version, provenance, model_file, folder, thread_name="mlflow-triton-reference"
        )  # fmt: skip

    def reference_cases(self) -> GoldenCases | None:
        """After a passing call: the inputs sent and the outputs they had to give (golden
        format), for :mod:`mlflow_triton.repository.references`; None without a reference."""
        if self.reference == "answers" or self._expected is None:
            return None
        cases = [(case.inputs, expected) for case, expected in zip(self.inputs.cases, self._expected, strict=True)]
        if any(expected is None for _, expected in cases):
            return None
        return GoldenCases([i for i, _ in cases], [o for _, o in cases], self.inputs.rtol, self.inputs.atol)

    def _expected_outputs(self, candidate: Candidate) -> list[dict[str, np.ndarray] | None]:
        """Per case, the reference outputs by MLflow name (None: answers are only checked)."""
        if self.reference != "local":
            return [case.expected for case in self.inputs.cases]
        self.start_reference(candidate.deployment, candidate.version, candidate.provenance, candidate.model_file)
        assert self._reference is not None
        return self._reference.result()

    def _run_cases(
        self, deployment: str, version: int, provenance: Provenance, model_file: Path | None, folder: str
    ) -> list[dict[str, np.ndarray]]:
        tensors = provenance.tensors
        names = {t["triton"]: t["mlflow"] for t in tensors["outputs"]}
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-verify-") as tmp:
            model_file = model_file or self._fetch(deployment, version, provenance, folder, Path(tmp))
            try:
                runs = [self._run_locally(model_file, tensors, case.inputs) for case in self.inputs.cases]
            except Exception as err:  # the local runtime, not Triton: no verdict on the model
                raise VerificationUnavailable(
                    f"The local {self.flavor.name} reference run of {deployment!r} version "
                    f"{version} failed ({type(err).__name__}: {err}); install a runtime "
                    "that can run it, or deploy with -C verify=false."
                ) from err
        return [{names[k]: v for k, v in run.items()} for run in runs]

    def _run_locally(
        self, model_file: Path, tensors: Mapping[str, list[dict[str, str]]], arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The flavor's runtime on ``arrays``; outputs by Triton name."""
        inputs = [(t["triton"], arrays[t["mlflow"]]) for t in tensors["inputs"]]
        return run_reference(self.flavor, model_file, inputs, [t["triton"] for t in tensors["outputs"]])

    def _fetch(self, deployment: str, version: int, provenance: Provenance, folder: str, tmp: Path) -> Path:
        """Stream the version's served file and its companions from ``folder`` into ``tmp``."""
        sizes = {entry["file"]: entry.get("size") for entry in provenance.files if entry.get("file")}
        files = list(sizes)
        try:
            if not files:
                raise MlflowException("provenance names no model file", error_code=INTERNAL_ERROR)
            for name in files:
                self.store.download_file(f"{folder}{name}", tmp / name, sizes[name])
        except MlflowException as err:
            raise VerificationUnavailable(
                f"Cannot fetch {deployment!r} version {version} for the local reference run: {err.message}"
            ) from err
        return tmp / files[0]

    # -- asking and checking ---------------------------------------------------------------------
    @staticmethod
    def _infer(server: Any, candidate: Candidate, config: Any, case: SmokeCase) -> dict[str, np.ndarray]:
        """One request; answers by MLflow name, per-sample scalars back to one value per row."""
        tensors = candidate.provenance.tensors
        scalars = per_sample_scalars(config)
        inputs = {
            t["triton"]: case.inputs[t["mlflow"]].reshape(-1, 1) if t["triton"] in scalars else case.inputs[t["mlflow"]]
            for t in tensors["inputs"]
        }  # fmt: skip
        datatypes = {t["triton"]: t["datatype"] for t in tensors["inputs"]}
        names = {t["triton"]: t["mlflow"] for t in tensors["outputs"]}
        answer = server.infer(candidate.model, inputs, datatypes, list(names), version=candidate.version)
        return {names[k]: v.reshape(-1) if k in scalars else v for k, v in answer.items()}

    def _check(
        self, index: int, answer: dict[str, np.ndarray], expected: dict[str, np.ndarray] | None, config: Any
    ) -> None:
        rows = len(next(iter(self.inputs.cases[index].inputs.values()))) if config.max_batch_size > 0 else None
        problems = _answer_problems(answer, io_from_config(config).outputs, rows, finite=expected is None)
        if not problems and expected is not None:
            reference = "the golden output" if self.reference == "golden" else f"the local {self.flavor.name} run"
            problems = compare_outputs(expected, answer, self.inputs.rtol, self.inputs.atol, reference)
        if problems:
            prefix = f"golden case {index}: " if self.reference == "golden" else ""
            raise MlflowException(prefix + "; ".join(problems), error_code=INTERNAL_ERROR)


def _answer_problems(answer: Mapping[str, np.ndarray], outputs: Any, rows: int | None, finite: bool) -> list[str]:
    """Every declared output present, shaped as the config declares (``rows`` on the batch axis
    when batched; -1 axes take any size), and, with ``finite`` (no reference to compare NaN
    with), finite."""
    problems = []
    for spec in outputs:
        got = answer.get(spec.source_name)
        expected = tuple(rows if i == 0 and rows is not None else d for i, d in enumerate(spec.shape))
        shown = tuple(d if d >= 0 else "any" for d in expected)
        if got is None:
            problems.append(f"replica returned no output {spec.source_name!r}")
        elif np.ndim(got) != len(expected) or any(d >= 0 and d != g for d, g in zip(expected, np.shape(got), strict=True)):
            problems.append(
                f"replica returned {np.size(got)} values for output {spec.source_name!r} (shape "
                f"{np.shape(got)}), expected shape {shown}"
            )
        elif finite and got.dtype.kind in "fc" and not np.all(np.isfinite(got)):
            problems.append(f"output {spec.source_name!r} is not finite")
    return problems
