"""Serving history: which version of a deployment served when, and how it got there.

Kept in the repository beside the model, ``NAME/mlflow-triton-history.json``, written only by
the lease holder (after a fencing check). Triton ignores files it does not know in a model
folder. Events, oldest first::

    {"event": "staged", "version": 3, "at": "...", "via": "publish", "verified": true}
    {"event": "serving", "version": 3, "at": "...", "via": "publish", "verified": true,
     "previous": 2, "registered_model": "fraud", "registered_version": "7"}
    {"event": "refused", "version": 4, "at": "...", "via": "publish", "reason": "...",
     "registered_model": "fraud", "registered_version": "8", "settings": {...}}
    {"event": "serving", "version": 2, "at": "...", "via": "rollback", "verified": true,
     "previous": 3, "rolled_back_from": 3}

``staged`` is written before ``config.pbtxt`` pins a version and ``serving`` after, so a
publisher killed in between leaves a ``staged`` version that the config either pins (the
next publisher records it as serving: ``via: repair``) or does not (it never served).

It answers what ``rollback`` and ``prune`` need: the previous serving version (like
``kubectl rollout undo``: never a refused version, nor one that was rolled back from), the
last known-good version, and which version folders never served (a dead publisher's upload).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from mlflow_triton.core.masking import mask_secrets
from mlflow_triton.repository.layout import HISTORY_FILE
from mlflow_triton.repository.store import ModelRepositoryStore

SCHEMA = 1
#: Events kept; older ones are dropped (the versions they name are long pruned).
MAX_EVENTS = 200

Via = Literal["publish", "rollback", "repair"]


@dataclass
class ServingHistory:
    """The events of one deployment; :meth:`load` it, :meth:`record` events, :meth:`save` it."""

    name: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, store: ModelRepositoryStore, name: str) -> "ServingHistory":
        raw = store.read_bytes(f"{name}/{HISTORY_FILE}")
        events = json.loads(raw).get("events", []) if raw else []
        return cls(name, [e for e in events if isinstance(e, dict)])

    def save(self, store: ModelRepositoryStore) -> None:
        body = {"schema": SCHEMA, "name": self.name, "events": self._trimmed()}
        store.write_bytes(f"{self.name}/{HISTORY_FILE}", json.dumps(body, indent=1).encode())

    def record(self, event: str, version: int, via: Via, **details: Any) -> dict[str, Any]:
        """Append an event. A refusal's ``reason`` (error text: it may name a URL with
        credentials) is stored masked: the repository is read by every replica's operator."""
        entry = {
            "event": event, "version": version, "via": via,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: mask_secrets(v) if k == "reason" and isinstance(v, str) else v
               for k, v in details.items() if v is not None},
        }  # fmt: skip
        self.events.append(entry)
        return entry

    def _trimmed(self) -> list[dict[str, Any]]:
        """At most :data:`MAX_EVENTS`, dropping the oldest non-``serving`` events first, so a
        storm of refusals never pushes the versions that served (rollback targets) out."""
        events = list(self.events)
        while len(events) > MAX_EVENTS:
            victim = next((i for i, e in enumerate(events) if e.get("event") != "serving"), 0)
            del events[victim]
        return events

    # -- questions ---------------------------------------------------------------------------
    def served(self) -> set[int]:
        """Versions that ever served."""
        return {e["version"] for e in self.events if e.get("event") == "serving"}

    def refused(self, via: Via | None = None) -> set[int]:
        """Versions refused (when ``via`` is given: refused on that path)."""
        return {
            e["version"] for e in self.events
            if e.get("event") == "refused" and (via is None or e.get("via") == via)
        }  # fmt: skip

    def staged_verified(self, version: int) -> bool | None:
        """Whether the last staging of ``version`` ran a verification (None: never staged)."""
        staged = [e for e in self.events if e.get("event") == "staged" and e["version"] == version]
        return bool(staged[-1].get("verified")) if staged else None

    def refusal_of(
        self, registered_model: str, registered_version: str, settings: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The last publish-time refusal of this registry version with these settings (a
        ``flavor`` of None in ``settings`` matches any flavor: the one resolved by default)."""

        def comparable(values: Any) -> Any:
            if isinstance(values, dict) and settings.get("flavor") is None:
                return {k: v for k, v in values.items() if k != "flavor"}
            return values

        for entry in reversed(self.events):
            if (
                entry.get("event") == "refused" and entry.get("via") == "publish"
                and entry.get("registered_model") == registered_model
                and str(entry.get("registered_version")) == str(registered_version)
                and comparable(entry.get("settings")) == comparable(settings)
            ):  # fmt: skip
                return entry
        return None

    def rolled_back_from(self) -> set[int]:
        return {e["rolled_back_from"] for e in self.events if e.get("rolled_back_from") is not None}

    def highest_version(self) -> int:
        """The highest version ever named, so version numbers are never reused."""
        return max((int(e["version"]) for e in self.events), default=0)

    def previous_good(self, serving: int | None, available: Iterable[int] | None = None) -> int | None:
        """The version that served before ``serving``, skipping versions refused when they
        were published, versions that were rolled back from and (when given) versions no
        longer ``available``. A version that served and then failed a rollback's verification
        (a replica out of memory, say) stays a candidate: it did serve well."""
        bad = self.refused(via="publish") | self.rolled_back_from()
        keep = None if available is None else set(available)
        for entry in reversed(self.events):
            version = entry["version"]
            if entry.get("event") != "serving" or version == serving or version in bad:
                continue
            if keep is None or version in keep:
                return version
        return None

    def to_list(self) -> list[dict[str, Any]]:
        return list(self.events)
