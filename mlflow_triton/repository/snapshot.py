"""Every deployment's state from one listing of the repository, for reconciling many models.

:func:`~mlflow_triton.repository.state.read_state` costs three requests per deployment
(``config.pbtxt``, the folder listing, the provenance). A reconciliation of 1,000 models would
make 3,000. Here one paginated listing of the whole repository (no delimiter: S3 answers
1,000 keys a request, with their ETags) gives every deployment's folders and files; the
contents of ``config.pbtxt`` and of the serving version's provenance are then read only when
their ETag differs from the one this process read last (:class:`RepositoryCache`, kept across
rounds by :func:`~mlflow_triton.promotion.watch`). A no-op ``watch`` round therefore costs
about ``objects / 1000`` list requests and no GET; a one-shot ``sync`` starts with an empty
cache and still reads two small objects per deployment. S3 has no batch GET, so
:meth:`RepositorySnapshot.states` keeps :data:`PREFETCH_WORKERS` of them in flight: at 20 ms
a request, 2,000 GETs take ~1.3 s instead of 40 s in series::

    cache = RepositoryCache()
    snapshot = cache.snapshot(store)          # one paginated listing
    state = snapshot.state("fraud")           # GETs only what changed since the last round
    states = snapshot.states(names)           # the same for many deployments, reads overlapped

A snapshot is a point-in-time view, good for the cheap "already serving?" comparison.
Anything that writes re-reads under the deployment's lease, as before.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from mlflow_triton.repository.layout import (
    CONFIG_FILE,
    PROVENANCE_FILE,
    is_deployment_name,
    validate_model_name,
)  # fmt: skip
from mlflow_triton.repository.provenance import parse_provenance
from mlflow_triton.repository.state import DeploymentState
from mlflow_triton.repository.store import (
    MAX_CONCURRENCY,
    MAX_POOL_EXTRA,
    ListedObject,
    ModelRepositoryStore,
)

logger = logging.getLogger(__name__)

#: Deployments whose state :meth:`RepositorySnapshot.states` reads at once: the connection
#: pool of one S3 store (:class:`~mlflow_triton.repository.s3_store.S3Store`).
PREFETCH_WORKERS = MAX_CONCURRENCY + MAX_POOL_EXTRA


class RepositoryCache:
    """Contents of small repository objects by ``(repository, key, ETag)``, across rounds.

    Thread-safe: the workers of one round read through it concurrently. Entries of objects
    that are gone or changed are dropped at the next :meth:`snapshot`, so the cache holds at
    most one ``config.pbtxt`` and one provenance per deployment.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[str, bytes]] = {}
        #: GETs made (a changed or new object) and avoided (ETag unchanged), for reports.
        self.reads = 0
        self.hits = 0

    def snapshot(self, store: ModelRepositoryStore) -> "RepositorySnapshot":
        """List ``store`` once and forget cached contents whose ETag no longer matches.

        Raises:
            NotImplementedError: the store has no recursive listing (read per deployment).
            MlflowException: the listing failed (from the store).
        """
        by_name: dict[str, dict[str, ListedObject]] = defaultdict(dict)
        for listed in store.list_objects(""):
            name, _, rest = listed.key.partition("/")
            if rest:
                by_name[name][rest] = listed
        current = {(store.uri, f"{n}/{r}"): o.etag for n, objects in by_name.items() for r, o in objects.items()}
        with self._lock:
            for key in [k for k in self._entries if k[0] == store.uri and current.get(k) != self._entries[k][0]]:
                del self._entries[key]
        return RepositorySnapshot(store, self, dict(by_name))

    def read(self, store: ModelRepositoryStore, listed: ListedObject) -> bytes | None:
        """The content of ``listed``, from the cache while its ETag is the one cached; None if
        it was deleted since the listing."""
        key = listed.key
        with self._lock:
            cached = self._entries.get((store.uri, key))
            if cached is not None and cached[0] == listed.etag:
                self.hits += 1
                return cached[1]
            self.reads += 1
        data = store.read_bytes(key)
        if data is not None:  # read after the listing: never older than the ETag it is kept under
            with self._lock:
                self._entries[(store.uri, key)] = (listed.etag, data)
        return data


class RepositorySnapshot:
    """One listing of a repository: the state of any deployment in it, on demand."""

    def __init__(
        self, store: ModelRepositoryStore, cache: RepositoryCache, objects: dict[str, dict[str, ListedObject]]
    ) -> None:
        self.store = store
        self.cache = cache
        self._objects = objects

    @property
    def names(self) -> list[str]:
        """Top-level folders that are deployment names (staging models are skipped)."""
        return sorted(n for n in self._objects if is_deployment_name(n))

    def state(self, name: str) -> DeploymentState:
        """What :func:`~mlflow_triton.repository.state.read_state` returns for ``name``, read
        from the listing and the cache (a missing deployment reads as not existing)."""
        validate_model_name(name)
        objects = self._objects.get(name, {})
        folders = {rest.split("/", 1)[0] for rest in objects if "/" in rest}
        files = {rest for rest in objects if "/" not in rest}
        return DeploymentState.from_listing(
            name, self._read(name, objects.get(CONFIG_FILE)), folders, files,
            lambda version: parse_provenance(self._read(name, objects.get(f"{version}/{PROVENANCE_FILE}"))),
        )

    def states(self, names: Iterable[str], workers: int | None = None) -> dict[str, DeploymentState]:
        """:meth:`state` of each of ``names``, ``workers`` (default :data:`PREFETCH_WORKERS`)
        deployments read at once (each deployment's config, then its provenance). A deployment
        whose reads fail is left out, for the caller to read again and report on its own.
        """
        wanted = sorted(set(names))
        workers = PREFETCH_WORKERS if workers is None else workers

        def read(name: str) -> DeploymentState | None:
            try:
                return self.state(name)
            except Exception as err:  # reported by the caller, which reads it again
                logger.debug("Reading the state of %s from %s failed: %s", name, self.store.uri, err)
                return None

        if len(wanted) < 2 or workers < 2:
            found = [read(name) for name in wanted]
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(wanted)), thread_name_prefix="snapshot") as pool:
                found = list(pool.map(read, wanted))
        return {state.name: state for state in found if state is not None}

    def deployments(self) -> list[DeploymentState]:
        """Like :func:`~mlflow_triton.repository.state.list_deployments`, from the snapshot."""
        states = (self.state(name) for name in self.names)
        return [state for state in states if state.exists]

    def _read(self, name: str, listed: ListedObject | None) -> bytes | None:
        return None if listed is None else self.cache.read(self.store, listed)
