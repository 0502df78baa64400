"""Verification of a candidate version before any client sees it.

A rollout (:mod:`mlflow_triton.rollout.switch`) loads the candidate on every replica under a
staging model name that no client uses, then calls a :data:`Verifier` with a
:class:`Candidate`. The default verifier, :class:`SmokeTest`, sends the model's MLflow input
example (or zeros shaped like its inputs) to every replica and compares Triton's answers with
the same file run locally (onnxruntime or ``torch.jit``). When the MLflow model carries
golden outputs (:mod:`mlflow_triton.core.golden`, written by the export callback), the replicas'
answers to those inputs are compared with them instead: no local runtime (torch,
onnxruntime) and no model download are needed. Raising refuses the candidate: the
deployment keeps serving what it served.

Model files are streamed from the repository to a temporary folder, never read into memory.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from mlflow_triton.triton_config import model_config as mcfg
from mlflow_triton.rollout.reference_run import run_reference
from mlflow_triton.core.golden import GoldenCases, check_case
from mlflow_triton.fleet.server import raise_failures

if TYPE_CHECKING:
    from mlflow_triton.flavors.model_source import ModelSource
    from mlflow_triton.fleet.server import TritonCluster
    from mlflow_triton.repository.store import ModelRepositoryStore

logger = logging.getLogger(__name__)

#: Tolerance of Triton's answer vs. the same file run locally.
SMOKE_RTOL = 1e-3
SMOKE_ATOL = 1e-5


@dataclass(frozen=True)
class Candidate:
    """A version loaded for verification, not yet visible to clients.

    Attributes:
        deployment: the model name clients use.
        model: the Triton model name to query (the staging name).
        version: the repository version.
        urls: the replicas that loaded it.
        provenance: the version's ``mlflow-triton.json``.
        model_file: a local copy of the served file (its external data beside it), if the
            publisher has one; else the verifier streams it from the repository.
    """

    deployment: str
    model: str
    version: int
    urls: tuple[str, ...]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    model_file: Path | None = None


#: Called once the candidate is READY on every replica; raise to refuse it.
Verifier = Callable[[Candidate], None]


class VerificationUnavailable(MlflowException):
    """Verification could not run (the repository or the local runtime failed), which says
    nothing about the model: the candidate is not refused, and a retry may pass
    (TEMPORARILY_UNAVAILABLE)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=TEMPORARILY_UNAVAILABLE)


#: Flavors whose files the smoke test can run locally as a reference.
LOCAL_REFERENCE_FLAVORS = ("onnx", "torchscript")


def runtime_available(flavor: str) -> bool:
    """True when the local runtime that can run ``flavor`` files is importable (never for
    ``triton`` and ``python_function``: those are checked by Triton's answers alone)."""
    if flavor not in LOCAL_REFERENCE_FLAVORS:
        return False
    try:
        return importlib.util.find_spec("onnxruntime" if flavor == "onnx" else "torch") is not None
    except (ImportError, ValueError):  # blocked by an import hook, or a broken install
        return False


class SmokeTest:
    """Send an input to every replica; compare with the file run locally.

    Args:
        store: the repository (to stream the version's files when no local copy is given).
        cluster: the replicas (protocol, timeouts).
        flavor: ``onnx`` or ``torchscript``.
        input_example: the MLflow input example (dict of arrays, array or DataFrame); None
            means zeros shaped like the signature (or the ONNX graph), ``-1`` axes set to 1.
        signature: the MLflow signature, for the zeros fallback.
        compare: compare with a local run. ``None``: when the runtime is installed; without
            it the check is that every replica answers with the declared outputs and finite
            values (a warning says so). ``True`` requires the runtime.
        rtol / atol: tolerances of ``numpy.allclose``.
        golden: golden outputs logged with the model; when given they are the reference
            (with their own tolerances) and no local runtime is used.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE at construction when ``compare=True`` and
            the local runtime (onnxruntime or torch) is missing, before anything is published.
    """

    def __init__(
        self,
        store: "ModelRepositoryStore",
        cluster: "TritonCluster",
        flavor: str,
        input_example: Any = None,
        signature: Any = None,
        compare: bool | None = None,
        rtol: float = SMOKE_RTOL,
        atol: float = SMOKE_ATOL,
        golden: GoldenCases | None = None,
    ) -> None:
        self.golden = golden
        self.store = store
        self.cluster = cluster
        self.flavor = flavor
        self.input_example = input_example
        self._example_source: "ModelSource | None" = None
        self.signature = signature
        self.rtol = rtol
        self.atol = atol
        available = runtime_available(flavor)
        if golden is not None:
            self.compare = False  # the golden outputs are the reference
            return
        if compare and not available:
            module = "onnxruntime" if flavor == "onnx" else "torch"
            raise MlflowException.invalid_parameter_value(
                f"Verification runs {flavor} models locally with {module}, which is not "
                "installed: pip install 'mlflow-triton[local]', or disable it (-C verify=false, "
                "--no-smoke-test)."
            )
        self.compare = available if compare is None else compare

    @classmethod
    def for_source(
        cls, store: "ModelRepositoryStore", cluster: "TritonCluster", source: "ModelSource",
        compare: bool | None = None,
    ) -> "SmokeTest":  # fmt: skip
        """A smoke test fed with ``source``'s golden outputs when it has them, else with its
        logged input example.

        Both are read by :meth:`prepare`, which a publisher calls once it knows the model
        changed and before it writes anything: a no-op publish reads neither.
        """
        test = cls(store, cluster, source.flavor, None, source.signature, compare)
        test._example_source = source
        return test

    def prepare(self) -> None:
        """Read the input example now (idempotent), so that a failure comes before any write.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when the example cannot be read.
        """
        source, self._example_source = self._example_source, None
        if source is None:
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-golden-") as tmp:
            golden = GoldenCases.download(source.download_uri, Path(tmp))
        if golden is not None:
            logger.info("%s carries %d golden case(s): verification uses them", source.model_uri, len(golden))
            self.golden, self.compare = golden, False  # the golden outputs are the reference
            return
        try:
            self.input_example = source.load_input_example()
        except Exception as err:
            raise MlflowException(
                f"Cannot read the input example of {source.model_uri} for verification: {err}",
                error_code=RESOURCE_DOES_NOT_EXIST,
            ) from err

    @classmethod
    def for_provenance(
        cls, store: "ModelRepositoryStore", cluster: "TritonCluster", provenance: Mapping[str, Any],
        compare: bool | None = None,
    ) -> "SmokeTest":  # fmt: skip
        """A smoke test for a version already in the repository (rollback, reload), fed with
        the input example of the MLflow model its provenance names."""
        from mlflow_triton.flavors.model_source import resolve_model

        flavor = provenance.get("flavor", "onnx")
        # The registry version that was published, never its alias resolved again: an alias
        # may point at another version (with other inputs) by now.
        registered = provenance.get("registered_model"), provenance.get("registered_version")
        model_uri = f"models:/{registered[0]}/{registered[1]}" if all(registered) else provenance.get("model_uri")
        if not model_uri:
            return cls(store, cluster, flavor, compare=compare)
        try:
            source = resolve_model(model_uri, flavor)
        except MlflowException as err:
            raise MlflowException(
                f"Cannot read {model_uri} for verification ({err.message}); retry with "
                "--no-smoke-test if MLflow is unreachable.",
                error_code=err.error_code,
            ) from err
        if flavor == "triton" and provenance.get("source_uri") not in (None, source.artifact_uri):
            # An ensemble's composing model (a sibling folder of the logged model): the logged
            # example and signature are the ensemble's; zeros shaped by its own config instead.
            return cls(store, cluster, flavor, compare=compare)
        return cls.for_source(store, cluster, source, compare)

    @property
    def needs_model_file(self) -> bool:
        """Whether it runs the model locally: a publisher that streams the file then keeps a
        local copy in the same pass instead of fetching it again."""
        return self.compare

    def __call__(self, candidate: Candidate) -> None:
        try:
            self.prepare()
        except MlflowException as err:  # no verdict on the model: MLflow could not be read
            raise VerificationUnavailable(err.message) from err
        tensors = candidate.provenance.get("tensors")
        if not tensors:
            raise MlflowException(
                f"{candidate.deployment!r} version {candidate.version} has no tensor map in its "
                "provenance.",
                error_code=INTERNAL_ERROR,
            )
        if self.golden is not None:
            self._verify_golden(candidate, tensors)
            return
        if not self.compare and self.flavor in LOCAL_REFERENCE_FLAVORS:
            logger.warning(
                "Verification of %s models checks that Triton answers; install %s to also compare "
                "the answers with the model run locally (or log golden outputs with the model).",
                self.flavor, "onnxruntime" if self.flavor == "onnx" else "torch",
            )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="mlflow-triton-verify-") as tmp:
            model_file = candidate.model_file
            if model_file is None and (self.compare or self.flavor == "onnx"):
                try:
                    model_file = self._fetch(candidate, Path(tmp))
                except MlflowException as err:
                    raise VerificationUnavailable(
                        f"Cannot fetch {candidate.deployment!r} version {candidate.version} for the "
                        f"local reference run: {err.message}"
                    ) from err
            arrays = self._inputs(tensors["inputs"], model_file, candidate.provenance)
            try:
                expected = self._run_locally(model_file, tensors, arrays) if self.compare else None
            except Exception as err:  # the local runtime, not Triton: no verdict on the model
                raise VerificationUnavailable(
                    f"The local {self.flavor} reference run of {candidate.deployment!r} version "
                    f"{candidate.version} failed ({type(err).__name__}: {err}); install a runtime "
                    "that can run it, or deploy with -C verify=false."
                ) from err
        scalars = _per_sample_scalars(candidate.provenance)
        inputs = {
            t["triton"]: arrays[t["mlflow"]].reshape(-1, 1) if t["triton"] in scalars else arrays[t["mlflow"]]
            for t in tensors["inputs"]
        }
        datatypes = {t["triton"]: t["datatype"] for t in tensors["inputs"]}
        outputs = [t["triton"] for t in tensors["outputs"]]
        batch = len(next(iter(arrays.values()))) if arrays else 0
        failures: dict[str, Exception | None] = {}
        for url in candidate.urls:
            try:
                with self.cluster.server(url) as server:
                    actual = server.infer(candidate.model, inputs, datatypes, outputs, version=candidate.version)
                actual = {k: v.reshape(-1) if k in scalars else v for k, v in actual.items()}
                if expected is not None:
                    self._compare(expected, actual)
                else:
                    self._check_answers(actual, batch, candidate.provenance)
            except Exception as err:
                failures[url] = err
        raise_failures(f"verify {candidate.deployment!r} version {candidate.version}", failures)
        logger.info(
            "Verified %s version %d on %d replica(s)", candidate.deployment, candidate.version,
            len(candidate.urls),
        )  # fmt: skip

    def _verify_golden(self, candidate: Candidate, tensors: Mapping[str, list[dict[str, str]]]) -> None:
        """Send every golden case to every replica; compare with the golden outputs."""
        scalars = _per_sample_scalars(candidate.provenance)
        limit = int((candidate.provenance.get("settings") or {}).get("max_batch_size", 0))
        datatypes = {t["triton"]: t["datatype"] for t in tensors["inputs"]}
        outputs = {t["triton"]: t["mlflow"] for t in tensors["outputs"]}
        failures: dict[str, Exception | None] = {}
        for url in candidate.urls:
            try:
                with self.cluster.server(url) as server:
                    for index, (case_inputs, case_outputs) in enumerate(self.golden):
                        rows = slice(None, limit) if limit > 0 else slice(None)
                        inputs = {}
                        for t in tensors["inputs"]:
                            array = np.asarray(case_inputs[t["mlflow"]])[rows]
                            inputs[t["triton"]] = array.reshape(-1, 1) if t["triton"] in scalars else array
                        answer = server.infer(candidate.model, inputs, datatypes, list(outputs), version=candidate.version)
                        actual = {outputs[k]: (v.reshape(-1) if k in scalars else v) for k, v in answer.items()}
                        expected = {k: np.asarray(v)[rows] for k, v in case_outputs.items()}
                        problems = check_case(expected, actual, self.golden.rtol, self.golden.atol)
                        if problems:
                            raise MlflowException(
                                f"golden case {index}: " + "; ".join(problems), error_code=INTERNAL_ERROR
                            )
            except Exception as err:
                failures[url] = err
        raise_failures(f"verify {candidate.deployment!r} version {candidate.version}", failures)
        logger.info(
            "Verified %s version %d on %d replica(s) against %d golden case(s)", candidate.deployment,
            candidate.version, len(candidate.urls), len(self.golden),
        )  # fmt: skip

    def _fetch(self, candidate: Candidate, tmp: Path) -> Path:
        """Stream the version's served file and its external data into ``tmp``."""
        provenance = candidate.provenance
        entries = [provenance.get("artifact") or {}] + list(provenance.get("external_data") or [])
        files = [entry.get("file") for entry in entries if entry.get("file")]
        if not files:
            raise MlflowException(
                f"{candidate.deployment!r} version {candidate.version}: provenance names no model file.",
                error_code=INTERNAL_ERROR,
            )
        for name in files:
            self.store.download_file(f"{candidate.deployment}/{candidate.version}/{name}", tmp / name)
        return tmp / files[0]

    def _inputs(
        self, specs: list[dict[str, str]], model_file: Path, provenance: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        if self.input_example is not None:
            arrays = mcfg.as_arrays(self.input_example, specs)
        else:
            arrays = self._zeros(specs, model_file, provenance)
        limit = int((provenance.get("settings") or {}).get("max_batch_size", 0))
        if limit > 0:  # the batch axis must fit max_batch_size
            arrays = {k: v[:limit] for k, v in arrays.items()}
        return arrays

    def _zeros(
        self, specs: list[dict[str, str]], model_file: Path | None, provenance: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        shapes: dict[str, tuple[int, ...]] = {}
        schema = getattr(self.signature, "inputs", None)
        if schema is not None and schema.is_tensor_spec():
            shapes = {s.name: tuple(s.shape) for s in schema.inputs if s.name}
        if self.flavor not in LOCAL_REFERENCE_FLAVORS:  # the published config is the truth
            shapes = {**shapes, **_config_shapes(provenance)}
        if self.flavor == "onnx":
            graph = {t.name: t.shape for t in mcfg.io_from_onnx(model_file).inputs}
            shapes = {t["mlflow"]: shapes.get(t["mlflow"], graph.get(t["triton"])) for t in specs}
        missing = [t["mlflow"] for t in specs if shapes.get(t["mlflow"]) is None]
        if missing:
            raise MlflowException.invalid_parameter_value(
                f"No input example and no shape for input(s) {missing}: log the model with "
                "input_example=... (or a tensor signature) to enable verification, or disable it "
                "with -C verify=false."
            )
        return {
            t["mlflow"]: np.zeros([d if d > 0 else 1 for d in shapes[t["mlflow"]]], mcfg.NUMPY_DTYPES[t["datatype"]])
            for t in specs
        }  # fmt: skip

    def _run_locally(
        self, model_file: Path, tensors: Mapping[str, list[dict[str, str]]], arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        inputs = [(t["triton"], arrays[t["mlflow"]]) for t in tensors["inputs"]]
        return run_reference(self.flavor, model_file, inputs, [t["triton"] for t in tensors["outputs"]])

    def _compare(self, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> None:
        for output, want in expected.items():
            got = actual.get(output)
            if got is None or np.shape(got) != np.shape(want):
                raise MlflowException(
                    f"output {output!r} has shape {np.shape(got)}, the local {self.flavor} run "
                    f"gives {np.shape(want)}",
                    error_code=INTERNAL_ERROR,
                )
            if want.dtype.kind in "biufc":
                if not np.allclose(got, want, rtol=self.rtol, atol=self.atol):
                    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                    raise MlflowException(
                        f"output {output!r} differs from the local {self.flavor} run: max abs "
                        f"diff {diff:.3g} (rtol={self.rtol}, atol={self.atol})",
                        error_code=INTERNAL_ERROR,
                    )
            elif not np.array_equal(got, want):
                raise MlflowException(
                    f"output {output!r} differs from the local {self.flavor} run",
                    error_code=INTERNAL_ERROR,
                )

    def _check_answers(self, actual: Mapping[str, np.ndarray], batch: int, provenance: Mapping[str, Any]) -> None:
        """Without a local runtime: every output present, batched as sent, and finite."""
        batched = int((provenance.get("settings") or {}).get("max_batch_size", 0)) > 0
        for output, got in actual.items():
            if got is None or (batched and (np.ndim(got) == 0 or len(got) != batch)):
                raise MlflowException(
                    f"output {output!r} has shape {np.shape(got)} for a batch of {batch}",
                    error_code=INTERNAL_ERROR,
                )
            if got.dtype.kind in "fc" and not np.all(np.isfinite(got)):
                raise MlflowException(f"output {output!r} is not finite", error_code=INTERNAL_ERROR)



def _config_shapes(provenance: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Full input shapes (batch axis -1 first when batched, as the model sees them) from the
    published config, keyed by MLflow name."""
    if not provenance.get("config_pbtxt"):
        return {}
    config = mcfg.parse_pbtxt(provenance["config_pbtxt"])
    names = {t["triton"]: t["mlflow"] for t in (provenance.get("tensors") or {}).get("inputs", [])}
    batch = (-1,) if config.max_batch_size > 0 else ()
    return {
        names.get(t.name, t.name): batch + tuple(t.reshape.shape if t.HasField("reshape") else t.dims)
        for t in config.input
    }


def _per_sample_scalars(provenance: Mapping[str, Any]) -> set[str]:
    """Tensors of a batched model that are scalars per sample: the config declares them
    ``dims: [1]`` with ``reshape { shape: [] }``, so Triton takes and returns ``[batch, 1]``
    where the model itself takes and returns ``[batch]``."""
    config = mcfg.parse_pbtxt(provenance["config_pbtxt"]) if provenance.get("config_pbtxt") else None
    if config is None or config.max_batch_size <= 0:
        return set()
    tensors = list(config.input) + list(config.output)
    return {t.name for t in tensors if t.HasField("reshape") and list(t.dims) == [1]}
