"""Registry-driven promotion: an MLflow alias decides what every Triton replica serves.

A :class:`PromotionSpec` (:mod:`.spec`) names registered models, the alias each one follows
(``production``, ``champion``...), the Triton deployment it feeds and that deployment's config.
:func:`sync` reconciles once and :func:`watch` in a loop (:mod:`.reconcile`), :func:`rollback`
serves the previous known-good version again (:mod:`.rollback`), and
:mod:`mlflow_triton.daemons.webhooks` reconciles when MLflow reports an alias move. The CLI
(``mlflow-triton sync|watch|rollback|serve-webhooks``) calls exactly these.

Python::

    spec = load_spec("promotion.yaml")                # or load_spec(models=["fraud"], ...)
    report = sync(spec)
    for model in report.models:
        print(model.describe())                       # fraud@champion: published ...
    if not report.ok:
        raise SystemExit(1)

Shell::

    mlflow-triton sync --alias production --model fraud --repo s3://models/triton \\
        --triton http://t1:8000,http://t2:8000 -C instance_kind=gpu
"""

from mlflow_triton.promotion.reconcile import SYNC_WORKERS, sync, watch
from mlflow_triton.promotion.reports import Action, ModelReport, RollbackResult, SyncReport
from mlflow_triton.promotion.rollback import rollback, serving_version
from mlflow_triton.promotion.spec import (
    DEFAULT_ALIAS,
    DEFAULT_LEASE_WAIT_S,
    ModelPromotion,
    PromotionSpec,
    load_spec,
)

__all__ = [
    "Action", "DEFAULT_ALIAS", "DEFAULT_LEASE_WAIT_S", "ModelPromotion", "ModelReport",
    "PromotionSpec", "RollbackResult", "SYNC_WORKERS", "SyncReport", "load_spec", "rollback",
    "serving_version", "sync", "watch",
]  # fmt: skip
