"""The MLflow registry hook: one object per tracking/registry URI, every registry operation h3ops does.

Registered models per project: `<project>-candidates`, `-continual`, `-merged` (and `-base`).
A version is created in one REST call carrying all its lineage tags, only after its artifacts are
fully uploaded to a run, so a crash never leaves a half-version visible; a retry finds the
uploaded run (or discards it) by the idempotency key. The production alias lives on
`<project>-merged`; how it moves is in registry/promotion.py.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from h3ops.checkpoint import CheckpointError, atomic_output_dir
from h3ops.digest import checkpoint_files, digest_dir
from h3ops.names import MODEL_SUFFIX
from registry.checkpoints import KINDS, TAG, inspect_checkpoint

SUFFIX = MODEL_SUFFIX  # the one vocabulary (h3ops/names.py)
PRODUCTION, PREVIOUS = "production", "previous-production"
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed; the message says what and why."""


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    idempotency_key: str = ""
    run_id: str = ""
    tags: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.uri


def model_name(project: str, kind: str) -> str:
    if not _PROJECT.match(project or ""):
        raise RegistryError(f"project name {project!r} is invalid (letters, digits, '_', '-', '.')")
    if kind not in SUFFIX:
        raise RegistryError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return f"{project}-{SUFFIX[kind]}"


def project_of(name: str) -> str:
    for suffix in SUFFIX.values():
        if name.endswith("-" + suffix):
            return name[: -len(suffix) - 1]
    raise RegistryError(f"{name!r} is not an h3ops registered model (<project>-candidates|continual|merged|base)")


def _unreachable(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return any(m in text for m in ("Max retries exceeded", "ConnectionError", "Connection refused",
                                   "ConnectTimeout", "ReadTimeout", "RemoteDisconnected"))


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def _is(e: Exception, code: str) -> bool:
    if getattr(e, "error_code", None) == code or code in str(e):
        return True
    # A create racing another create can surface as the database's own unique-key error.
    return code == "RESOURCE_ALREADY_EXISTS" and any(m in str(e) for m in ("duplicate key", "UNIQUE constraint"))


class Registry:
    def __init__(self, tracking_uri: str, registry_uri: str | None = None, artifact_location: str | None = None):
        from mlflow import MlflowClient  # imported here: `h3ops merge` must not pay for MLflow

        if not tracking_uri:
            raise RegistryError("a tracking URI is required (no implicit ./mlruns)")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.artifact_location = artifact_location.rstrip("/") if artifact_location else None
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    # --- plumbing -----------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        loc = f"{self.artifact_location}/{quote(name, safe='')}" if self.artifact_location else None
        try:
            return self.client.create_experiment(name, artifact_location=loc)
        except Exception as e:  # created concurrently by another process
            if not _is(e, "RESOURCE_ALREADY_EXISTS"):
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def _ensure_model(self, name: str, kind: str) -> None:
        try:
            self.client.create_registered_model(
                name, tags={f"{TAG}kind": kind}, description=f"h3ops {kind} checkpoints of project "
                f"{project_of(name)!r}; lineage in each version's h3ops.* tags")
        except Exception as e:
            if not _is(e, "RESOURCE_ALREADY_EXISTS"):
                raise

    def resolve(self, model_uri: str | VersionRef) -> VersionRef:
        """`models:/name/version` or `models:/name@alias` → the version, or a clear error."""
        if isinstance(model_uri, VersionRef):
            model_uri = model_uri.uri
        m = _URI.match(str(model_uri))
        if not m:
            raise RegistryError(f"{model_uri!r} is not a model URI (models:/<name>/<version> or models:/<name>@<alias>)")
        try:
            mv = (self.client.get_model_version(m["name"], m["version"]) if m["version"]
                  else self.client.get_model_version_by_alias(m["name"], m["alias"]))
        except Exception as e:
            if _is(e, "RESOURCE_DOES_NOT_EXIST") or _is(e, "INVALID_PARAMETER_VALUE"):
                raise RegistryError(f"{model_uri}: no such model version") from None
            raise
        return self._ref(mv)

    @staticmethod
    def _ref(mv) -> VersionRef:
        tags = dict(mv.tags or {})
        return VersionRef(mv.name, str(mv.version), tags.get(f"{TAG}idempotency_key", ""), mv.run_id or "", tags)

    def _find_by_key(self, name: str, key: str) -> list:
        found = self.client.search_model_versions(f"name = '{name}' and tags.`{TAG}idempotency_key` = '{key}'")
        return sorted((v for v in found if v.status == "READY"), key=lambda v: int(v.version))

    # --- registration -------------------------------------------------------------------------------
    def register_checkpoint(self, folder: str | Path, *, project: str, kind: str, dimension: str | None = None,
                            data_digest: str | None = None, config_digest: str | None = None,
                            parents: Iterable[Any] = (), method: str | None = None,
                            description: str | None = None, base_digest: str | None = None,
                            allow_remote_code: bool = False) -> VersionRef:
        """Upload a checkpoint folder and register it; the same inputs and content again return the
        same version, the same inputs with other content are refused (nothing is uploaded)."""
        name = model_name(project, kind)
        lineage = inspect_checkpoint(folder, kind=kind, dimension=dimension, data_digest=data_digest,
                                     config_digest=config_digest, base_digest=base_digest, parents=parents,
                                     method=method, allow_remote_code=allow_remote_code)
        try:
            return self._register(Path(folder), project, name, kind, lineage, description)
        except Exception as e:
            if _unreachable(e):
                raise RegistryError(f"MLflow at {self.tracking_uri} (registry {self.registry_uri}) was unreachable "
                                    f"while registering {folder}: {_first_line(e)}. No version was created; "
                                    "retrying is safe (the idempotency key finds any finished upload)") from e
            raise

    def _register(self, folder: Path, project: str, name: str, kind: str, lineage, description) -> VersionRef:
        key = lineage.idempotency_key
        self._ensure_model(name, kind)
        existing = self._find_by_key(name, key)
        if existing:
            return self._same_content(self._ref(existing[0]), lineage, folder)
        self._refuse_other_content(name, lineage, folder)
        run_id = self._uploaded_run(project, name, lineage, folder)
        # A merge's diagnostics.json is uploaded with the folder; the tag says where to find it.
        extra = {f"{TAG}diagnostics": "checkpoint/diagnostics.json"} if (folder / "diagnostics.json").is_file() else {}
        run = self.client.get_run(run_id)
        desc = description or (f"{kind} checkpoint" + (f" for {lineage.dimension}" if lineage.dimension else "")
                               + (f", method {lineage.method}" if lineage.method else "")
                               + f", produced by {lineage.produced_by}")
        mv = self.client.create_model_version(name, f"{run.info.artifact_uri}/checkpoint", run_id=run_id,
                                              tags={**lineage.tags(), **extra}, description=desc)
        mv = self._await_ready(mv)
        # Two processes registering the same inputs at once may both create a version: the lowest
        # wins and the other removes its own, so the key stays unique.
        winners = self._find_by_key(name, key)
        if winners and winners[0].version != mv.version:
            self.client.delete_model_version(name, mv.version)
            return self._same_content(self._ref(winners[0]), lineage, folder)
        try:  # …and one registering other content for the same inputs at the same time loses to it
            self._refuse_other_content(name, lineage, folder, below=int(mv.version))
        except RegistryError:
            self.client.delete_model_version(name, mv.version)
            raise
        return self._ref(mv)

    @staticmethod
    def _same_content(ref: VersionRef, lineage, folder: Path) -> VersionRef:
        """A version found by key must hold exactly this content (the key names it; tags could lie)."""
        theirs = ref.tags.get(f"{TAG}content_digest")
        if theirs != lineage.content_digest:
            raise RegistryError(f"{folder}: {ref.uri} carries this folder's idempotency key but content {theirs}, "
                                f"not {lineage.content_digest}; refusing to return it (nothing was registered)")
        return ref

    def _refuse_other_content(self, name: str, lineage, folder: Path, below: int | None = None) -> None:
        """Refuse a second, different checkpoint claiming the same inputs as a registered one: the
        registry would hold two models with one lineage, and a rerun could be answered with either."""
        found = self.client.search_model_versions(
            f"name = '{name}' and tags.`{TAG}inputs_key` = '{lineage.inputs_key}'")
        clash = sorted((v for v in found if v.status == "READY" and (below is None or int(v.version) < below)
                        and (v.tags or {}).get(f"{TAG}content_digest") != lineage.content_digest),
                       key=lambda v: int(v.version))
        if clash:
            v = clash[0]
            raise RegistryError(
                f"{folder}: models:/{v.name}/{v.version} was registered from the same inputs (kind, dimension, "
                f"base, data, config, method, parents) with different content ({v.tags.get(f'{TAG}content_digest')} "
                f"there, {lineage.content_digest} here); nothing was registered. A checkpoint with other weights "
                "must differ in what made it (data or config digest)")

    def _uploaded_run(self, project: str, name: str, lineage, folder: Path) -> str:
        """A finished run holding exactly this checkpoint: reused after a crash, else uploaded now."""
        exp = self.experiment_id(f"h3ops/{project}/registry")
        key = lineage.idempotency_key
        runs = self.client.search_runs([exp], f"tags.`{TAG}idempotency_key` = '{key}'")
        for r in runs:
            complete = r.info.status == "FINISHED" and r.data.tags.get(f"{TAG}upload") == "complete"
            if complete and r.data.tags.get(f"{TAG}content_digest") == lineage.content_digest:
                return r.info.run_id
            # Left by a crashed or different attempt: hide it so nothing half-done stays visible.
            self.client.set_terminated(r.info.run_id, "FAILED")
            self.client.delete_run(r.info.run_id)
        run = self.client.create_run(exp, tags={**lineage.tags(), f"{TAG}upload": "started",
                                                f"{TAG}model_name": name, "mlflow.runName": f"register-{lineage.kind}"})
        rid = run.info.run_id
        try:
            # File by file from the same list the digest walks: hidden files are neither uploaded nor
            # digested (log_artifacts would upload the whole tree).
            for f in checkpoint_files(folder):
                parent = f.relative_to(folder).parent.as_posix()
                self.client.log_artifact(rid, str(f), "checkpoint" if parent == "." else f"checkpoint/{parent}")
            if (folder / "diagnostics.json").is_file():
                self.client.set_tag(rid, f"{TAG}diagnostics", "checkpoint/diagnostics.json")
            self.client.set_tag(rid, f"{TAG}upload", "complete")
            self.client.set_terminated(rid, "FINISHED")
        except BaseException:
            try:
                self.client.set_terminated(rid, "FAILED")
                self.client.delete_run(rid)
            except Exception:
                pass  # server unreachable: the next attempt discards this run by its key
            raise
        return rid

    def _await_ready(self, mv, deadline_s: float = 120.0):
        end = time.monotonic() + deadline_s
        while mv.status == "PENDING_REGISTRATION" and time.monotonic() < end:
            time.sleep(0.2)
            mv = self.client.get_model_version(mv.name, mv.version)
        if mv.status != "READY":
            raise RegistryError(f"models:/{mv.name}/{mv.version}: registration ended {mv.status}")
        return mv

    def download(self, model_uri: str | VersionRef, dst: str | Path, overwrite: bool = False) -> Path:
        """Fetch a version's checkpoint into `dst` (atomically) and verify its content digest."""
        ref = self.resolve(model_uri)
        with atomic_output_dir(dst, overwrite=overwrite) as tmp:
            scratch = Path(tempfile.mkdtemp(dir=tmp))
            self.client.download_artifacts(ref.run_id, "checkpoint", str(scratch))
            for p in (scratch / "checkpoint").iterdir():
                shutil.move(str(p), tmp / p.name)
            shutil.rmtree(scratch)
            want = ref.tags.get(f"{TAG}content_digest")
            if want and digest_dir(tmp) != want:
                raise CheckpointError(f"{ref.uri}: downloaded files do not match the registered digest {want}")
        return Path(dst)

    # --- evaluation results -------------------------------------------------------------------------
    def log_evaluation(self, model_uri: str | VersionRef, metrics: Mapping[str, float], scores: Any,
                       suite_digest: str, details_dir: str | Path | None = None, *,
                       model_digest: str | None = None) -> str:
        """Log per-benchmark metrics and the four averages to an evaluation run linked to the version.

        Scores belong to content: the run is tagged with the version's content digest, and
        `model_digest` (the digest of the folder that was evaluated) must be that digest."""
        from evaluation.scoring import Scores

        ref = self.resolve(model_uri)
        content = ref.tags.get(f"{TAG}content_digest")
        if not content:
            raise RegistryError(f"{ref.uri} has no {TAG}content_digest tag: its scores could not be bound to content")
        if model_digest is not None and model_digest != content:
            raise RegistryError(f"{ref.uri} holds content {content}, but these scores were measured on {model_digest}: "
                                "scores belong to the content they were measured on; nothing was logged")
        sc = scores if isinstance(scores, Scores) else Scores.from_dict(scores)
        if sc.suite_digest != suite_digest:
            raise RegistryError(f"scores were computed with suite digest {sc.suite_digest}, not {suite_digest}")
        values = {**{k: float(v) for k, v in metrics.items()}, **sc.metrics, **sc.averages()}
        exp = self.experiment_id(f"h3ops/{project_of(ref.name)}/evaluations")
        run = self.client.create_run(exp, tags={
            "mlflow.runName": f"eval-{ref.name}-v{ref.version}-{sc.suite}", f"{TAG}model_uri": ref.uri,
            f"{TAG}model_digest": content, f"{TAG}suite": sc.suite, f"{TAG}suite_digest": suite_digest,
            f"{TAG}scores": json.dumps(sc.to_dict(), sort_keys=True)})
        rid = run.info.run_id
        self._log_metrics(rid, values)
        self.client.log_param(rid, "suite", sc.suite)
        if details_dir:
            self.client.log_artifacts(rid, str(details_dir), "details")
        self.client.set_terminated(rid, "FINISHED")
        # The UI's version comparison shows the metrics of each version's source run: mirror them there.
        if ref.run_id:
            self._log_metrics(ref.run_id, values)
        for k, v in {f"{TAG}eval_run_id": rid, f"{TAG}suite_digest": suite_digest,
                     f"{TAG}avg": f"{sc.avg:.4f}"}.items():
            self.client.set_model_version_tag(ref.name, ref.version, k, v)
        return rid

    def _log_metrics(self, run_id: str, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])

    def get_scores(self, model_uri: str | VersionRef, suite_digest: str | None = None):
        """The 3H scores measured on this version's content: the latest, or the latest under one
        suite digest; None if never scored. Looked up by (content digest, suite digest), never by
        the version's own tags, so a run logged for it but measured on other content never counts."""
        from evaluation.scoring import Scores

        run = self.evaluation_run(model_uri, suite_digest)
        return Scores.from_dict(json.loads(run.data.tags[f"{TAG}scores"])) if run else None

    def evaluation_run(self, model_uri: str | VersionRef, suite_digest: str | None = None):
        """The latest MLflow evaluation run measured on this version's content (None if none)."""
        ref = self.resolve(model_uri)
        content = ref.tags.get(f"{TAG}content_digest")
        exp = self.client.get_experiment_by_name(f"h3ops/{project_of(ref.name)}/evaluations")
        if not content or exp is None:
            return None
        query = f"tags.`{TAG}model_digest` = '{content}'"
        if suite_digest is not None:
            query += f" and tags.`{TAG}suite_digest` = '{suite_digest}'"
        runs = self.client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    # --- queries ------------------------------------------------------------------------------------
    def versions(self, project: str, kind: str = "merged") -> list[VersionRef]:
        name = model_name(project, kind)
        found = self.client.search_model_versions(f"name = '{name}'")
        return [self._ref(v) for v in sorted(found, key=lambda v: int(v.version)) if v.status == "READY"]

    def continual_sequence(self, project: str) -> list[VersionRef]:
        """The newest continual-DPO sequence, stage 1 first (registry/references.py)."""
        from registry.references import continual_sequence

        return continual_sequence(self, project)

    def production(self, project: str) -> VersionRef | None:
        return self._alias(project, PRODUCTION)

    def previous_production(self, project: str) -> VersionRef | None:
        return self._alias(project, PREVIOUS)

    def _alias(self, project: str, alias: str) -> VersionRef | None:
        try:
            return self._ref(self.client.get_model_version_by_alias(model_name(project, "merged"), alias))
        except Exception as e:
            if _is(e, "RESOURCE_DOES_NOT_EXIST") or _is(e, "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def ui_url(self) -> str:
        if not self.tracking_uri.startswith(("http://", "https://")):
            raise RegistryError(f"the MLflow UI needs an http(s) tracking server, not {self.tracking_uri}")
        return self.tracking_uri.rstrip("/")

    def compare_url(self, project: str, versions: Iterable[str | int] | None = None, kind: str = "merged") -> str:
        """A link to the MLflow UI page comparing versions side by side (metrics of their runs)."""
        name = model_name(project, kind)
        refs = [r for r in self.versions(project, kind) if versions is None or r.version in {str(v) for v in versions}]
        if len(refs) < 2:
            raise RegistryError(f"{name}: need at least two versions to compare, found {[r.version for r in refs]}")
        runs = {r.version: r.run_id for r in refs}  # the page reads it as versionsToRuns
        return (f"{self.ui_url()}/#/compare-model-versions?name={quote(json.dumps(quote(name, safe='')))}"
                f"&runs={quote(json.dumps(runs, separators=(',', ':')))}")

    # --- promotion (registry/promotion.py) ----------------------------------------------------------
    def promote(self, project: str, model_uri: str | VersionRef, decision: Any, **kw):
        from registry.promotion import promote

        return promote(self, project, model_uri, decision, **kw)

    def rollback(self, project: str, **kw):
        from registry.promotion import rollback

        return rollback(self, project, **kw)

    def write_serving_manifest(self, project: str, path: str, **kw) -> dict:
        from registry.promotion import write_serving_manifest

        return write_serving_manifest(self, project, path, **kw)
