"""The one served version, switched atomically: requests lease it, a switch swaps the pointer.

A request takes a lease on whatever is current when it starts and keeps it to the end, so a switch
never changes the model under a request. The old version is closed only when its last lease ends.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class Target:
    """A registered version as serving sees it: what the alias resolved to, and its digest."""
    name: str
    version: str
    digest: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, str]:
        return {"registered_model": self.name, "version": self.version, "digest": self.digest, "uri": self.uri}


@dataclass(eq=False)
class Served:
    target: Target
    engine: Any
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0


class NotReady(RuntimeError):
    """No version is loaded yet (startup) or the last one failed: nothing to answer with."""


class ModelSlot:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._current: Served | None = None
        self._loaded: list[Served] = []  # current plus versions still draining

    @property
    def current(self) -> Served | None:
        return self._current

    @property
    def loaded(self) -> int:
        with self._cond:
            return len(self._loaded)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Served]:
        with self._cond:
            served = self._current
            if served is None:
                raise NotReady("no model version is loaded yet")
            served.leases += 1
        try:
            yield served
        finally:
            with self._cond:
                served.leases -= 1
                self._cond.notify_all()

    def swap(self, new: Served) -> Served | None:
        """Make `new` current in one step; return the version it replaced (still loaded)."""
        with self._cond:
            old, self._current = self._current, new
            self._loaded.append(new)
            return old

    def retire(self, old: Served, deadline_s: float = 3600.0) -> bool:
        """Wait until no request holds `old` (bounded), then close it. True if it drained in time."""
        with self._cond:
            drained = self._cond.wait_for(lambda: old.leases == 0, timeout=deadline_s)
            if old in self._loaded:
                self._loaded.remove(old)
        old.engine.close()
        return drained

    def close_all(self) -> None:
        """Shutdown: close every loaded version (an engine may be a process of its own)."""
        with self._cond:
            loaded, self._loaded, self._current = list(self._loaded), [], None
        for served in loaded:
            served.engine.close()
