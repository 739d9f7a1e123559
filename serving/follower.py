"""Follow a registry alias: on a move, fetch by digest, verify, load beside the old, switch, unload.

Two ways in, one path: the poller (every `interval` seconds) and the hand-off (`sync(expected=…)`,
what the promote_to_serving DAG calls) both end in `sync`, serialised by one lock, so a promotion
seen by both is switched to once. A version that fails to fetch, verify or load is remembered as
refused with its reason: the poller does not retry it (registered versions are immutable, so the
same bytes would fail again); a hand-off naming it retries once and reports the reason.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from serving.slot import ModelSlot, Served, Target

log = logging.getLogger("h3ops.serving")
DIGEST_TAG = "h3ops.content_digest"


class SwitchError(RuntimeError):
    """The version was not switched to; the message says why. The old version keeps serving."""


class HandoffMismatch(SwitchError):
    """The hand-off names a version or digest the alias does not resolve to (it moved again)."""


class Follower:
    def __init__(self, registry: Any, model_uri: str, cache_dir: str | Path,
                 load: Callable[[Path, Target], Any], slot: ModelSlot | None = None, keep: int = 2):
        self.registry = registry
        self.model_uri = model_uri
        self.cache_dir = Path(cache_dir)
        self.load = load
        self.slot = slot or ModelSlot()
        self.keep = max(1, keep)
        self.refused: dict[str, str] = {}  # version → reason
        self.last_error: str | None = None
        self.last_switch: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # --- what the alias says --------------------------------------------------------------------
    def resolve(self) -> Target:
        ref = self.registry.resolve(self.model_uri)
        digest = ref.tags.get(DIGEST_TAG)
        if not digest:
            raise SwitchError(f"{ref.uri} has no {DIGEST_TAG} tag: its download cannot be verified, so it is "
                              "never served (register it with h3ops register)")
        return Target(ref.name, ref.version, digest)

    def _serving(self, t: Target) -> bool:
        cur = self.slot.current
        return cur is not None and cur.target == t

    # --- the switch -----------------------------------------------------------------------------
    def sync(self, expected: Target | None = None) -> dict[str, Any]:
        """Serve what the alias resolves to now; with `expected`, it must be that version and digest."""
        with self._lock:
            try:
                t = self.resolve()
            except SwitchError as e:
                self.last_error = str(e)
                raise
            except Exception as e:  # registry unreachable, alias unset
                self.last_error = f"cannot resolve {self.model_uri}: {type(e).__name__}: {e}"
                raise SwitchError(self.last_error) from e
            if expected is not None and (t.version != expected.version or t.digest != expected.digest):
                raise HandoffMismatch(f"the hand-off names version {expected.version} ({expected.digest}) but "
                                      f"{self.model_uri} resolves to version {t.version} ({t.digest}): it moved "
                                      "again since; the newer hand-off decides")
            if self._serving(t):
                return {"switched": False, "served": t.to_dict(), "message": f"already serving {t.uri}"}
            try:
                result = self._switch(t)
            except Exception as e:
                reason = f"{t.uri} ({t.digest}) was not switched to: {type(e).__name__}: {e}"
                self.refused[t.version] = reason
                self.last_error = reason
                log.error("%s; still serving %s", reason, self.slot.current.target.uri if self.slot.current else "nothing")
                raise SwitchError(reason) from e
            self.refused.pop(t.version, None)
            self.last_error = None
            self.last_switch = result
            return result

    def _switch(self, t: Target) -> dict[str, Any]:
        t0 = time.perf_counter()
        folder = self._fetch(t)
        t1 = time.perf_counter()
        engine = self.load(folder, t)
        try:
            engine.warm_up()
        except BaseException:
            engine.close()
            raise
        t2 = time.perf_counter()
        old = self.slot.swap(Served(t, engine))
        t3 = time.perf_counter()
        log.info("serving %s (%s); fetch+verify %.2fs, load %.2fs", t.uri, t.digest, t1 - t0, t2 - t1)
        if old is not None:
            # Unloaded only once its in-flight requests finish; the hand-off does not wait for that.
            threading.Thread(target=self.slot.retire, args=(old,), name=f"retire-{old.target.version}",
                             daemon=True).start()
        self._prune({t.digest, *(old.target.digest for old in [old] if old is not None)})
        return {"switched": True, "served": t.to_dict(), "previous": old.target.to_dict() if old else None,
                "seconds": {"fetch_verify": round(t1 - t0, 4), "load": round(t2 - t1, 4),
                            "swap": round(t3 - t2, 6), "total": round(t3 - t0, 4)}}

    def _fetch(self, t: Target) -> Path:
        """The version's files in the cache, by digest; downloaded and verified if not there."""
        from h3ops.digest import digest_dir

        dest = self.cache_dir / t.digest.split(":", 1)[-1]
        if dest.is_dir():
            # The cache is a disk other processes can touch: its bytes are re-verified before loading.
            if digest_dir(dest) == t.digest:
                return dest
            log.warning("%s: cached copy does not match %s; downloading again", dest, t.digest)
            shutil.rmtree(dest)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Registry.download writes into a temporary sibling, verifies the registered digest and
        # only then renames: a corrupted artifact leaves nothing in the cache.
        self.registry.download(t.uri, dest)
        return dest

    def _prune(self, keep_digests: set[str]) -> None:
        """Keep the served and previous versions' files (a rollback reloads without downloading)."""
        if not self.cache_dir.is_dir():
            return
        dirs = sorted((d for d in self.cache_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        wanted = {d.split(":", 1)[-1] for d in keep_digests}
        extra = [d for d in dirs if d.name not in wanted]
        for d in extra[max(0, self.keep - len(wanted)):]:
            shutil.rmtree(d, ignore_errors=True)

    # --- polling --------------------------------------------------------------------------------
    def poll_once(self) -> dict[str, Any] | None:
        try:
            t = self.resolve()
        except Exception as e:  # registry unreachable or the alias unset: keep serving, say why
            self.last_error = f"cannot resolve {self.model_uri}: {type(e).__name__}: {e}"
            return None
        if self._serving(t) or t.version in self.refused:
            return None
        try:
            return self.sync()
        except SwitchError:
            return None  # recorded in refused / last_error by sync

    def poll_forever(self, interval_s: float, stop: threading.Event) -> None:
        while True:
            self.poll_once()
            if stop.wait(interval_s):
                return

    def status(self) -> dict[str, Any]:
        cur = self.slot.current
        return {"status": "ok" if cur else "loading", "model_uri": self.model_uri,
                "served": cur.target.to_dict() if cur else None, "loaded": self.slot.loaded,
                "refused": dict(self.refused), "last_error": self.last_error, "last_switch": self.last_switch}
