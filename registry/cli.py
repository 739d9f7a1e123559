"""`h3ops register | versions | compare | promote | rollback`: the registry's CLI twin.

Exit codes: 0 done, 1 gate failed (nothing moved), 2 bad input or a refused operation.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Any

from h3ops.checkpoint import CheckpointError
from h3ops.cliparser import Parser, add_json
from registry.api import RegistryError
from registry import compare
from registry.checkpoints import KINDS, TAG


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking server (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--registry-uri", default=os.environ.get("MLFLOW_REGISTRY_URI"))
    p.add_argument("--artifact-location", default=None, help="artifact root for experiments h3ops creates")
    p.add_argument("--project", required=True)


EXAMPLES = {
    "register": "h3ops register ./ckpt/helpful --project proj --kind candidate --dimension helpfulness",
    "versions": "h3ops versions --project proj --kind merged --json",
    "compare": "h3ops compare --project proj --kind merged 3 4",
    "promote": "h3ops promote --project proj --candidate models:/proj-merged/4",
    "rollback": "h3ops rollback --project proj --reason 'regression seen in serving'",
}


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"h3ops {cmd}", example=EXAMPLES[cmd])
    _common(p)
    if cmd == "register":
        p.add_argument("folder")
        p.add_argument("--kind", required=True, choices=["candidate", "continual", "merged", "base"])
        for opt in ("dimension", "data-digest", "config-digest", "base-digest", "method", "description"):
            p.add_argument(f"--{opt}")
        p.add_argument("--parent", action="append", default=[], help="parent URI or sha256 digest (repeatable)")
        p.add_argument("--allow-remote-code", action="store_true",
                       help="accept *.py files and auto_map in config.json (code transformers would run)")
    elif cmd == "versions":
        p.add_argument("--kind", default="merged", choices=list(KINDS))
        add_json(p)
    elif cmd == "compare":
        p.add_argument("--kind", action="append", choices=[*KINDS, "all"],
                       help="kinds to compare, repeatable (default: all; production is always included)")
        p.add_argument("version", nargs="*", help="version numbers (one --kind) or models:/ URIs (default: all)")
        p.add_argument("--plot", help="write the 3H trade-off plot (PNG) here")
        p.add_argument("--log", action="store_true",
                       help="also record the table and plot as a comparison run in MLflow")
        add_json(p)
    elif cmd == "promote":
        p.add_argument("--candidate", required=True, help="models:/<project>-merged/<version>")
        p.add_argument("--decision", help="a decision JSON from the pipeline's gate step: verified against the "
                                          "decision recomputed from the registry's scores (else the gate runs here)")
        p.add_argument("--margin", type=float)
        p.add_argument("--max-regression", type=float)
        p.add_argument("--rule", choices=["average", "every_dimension"])
        p.add_argument("--manifest", help="serving manifest location (local path or s3://bucket/key)")
        p.add_argument("--by")
        p.add_argument("--reason", help="why (recorded on the version); required with --force")
        p.add_argument("--force", action="store_true",
                       help="bypass the gate (needs --reason; recorded in the audit trail)")
        add_json(p)
    elif cmd == "rollback":
        p.add_argument("--manifest")
        p.add_argument("--by")
        p.add_argument("--reason", default="rollback")
        add_json(p)
    return p


def _registry(a):
    from registry.api import Registry

    if not a.tracking_uri:
        raise RegistryError("no tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return Registry(a.tracking_uri, a.registry_uri, a.artifact_location)


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["uri", "kind", "dimension", "method", "helpful_avg", "honest_avg", "harmless_avg", "avg",
            "aliases", "parents"]
    cells = [[c for c in cols]] + [[", ".join(map(str, r[c])) if isinstance(r[c], list)
                                    else ("-" if r[c] in (None, "") else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _policy(a):
    """The gate policy this promotion applies: the defaults, with the flags given on top."""
    from evaluation.gate import GatePolicy

    return GatePolicy(**{k: v for k, v in (("margin", a.margin), ("max_regression", a.max_regression),
                                           ("rule", a.rule)) if v is not None})


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], list(argv[1:])
    a = _parser(cmd).parse_args(rest)
    from evaluation.gate import GateError
    from evaluation.scoring import ScoringError

    # MLflow prints "View run …" links on stdout; keep stdout for our own (machine-readable) output.
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return _run(cmd, a, out)
    except (RegistryError, CheckpointError, ScoringError, GateError) as e:
        print(f"h3ops {cmd}: error: {e}", file=sys.stderr)
        return 2


def _run(cmd: str, a, out) -> int:
    reg = _registry(a)
    if cmd == "register":
        ref = reg.register_checkpoint(a.folder, project=a.project, kind=a.kind, dimension=a.dimension,
                                      data_digest=a.data_digest, config_digest=a.config_digest,
                                      base_digest=a.base_digest, parents=a.parent, method=a.method,
                                      description=a.description, allow_remote_code=a.allow_remote_code)
        print(json.dumps({"uri": ref.uri, "name": ref.name, "version": ref.version,
                          "idempotency_key": ref.idempotency_key}), file=out)
    elif cmd == "versions":
        rows = compare.rows(reg, a.project, [a.kind], include_production=False)
        print(json.dumps(rows, indent=2) if a.json else _table(rows), file=out)
    elif cmd == "compare":
        kinds = list(KINDS) if not a.kind or "all" in a.kind else a.kind
        rows = compare.rows(reg, a.project, kinds, a.version or None)
        url = None
        with contextlib.suppress(RegistryError):  # a file/SQLite store has no UI to link to
            url = compare.runs_url(reg, rows)
        if a.plot:
            compare.plot(rows, a.plot, title=f"{a.project}: 3H trade-off")
        run_id = compare.log(reg, a.project, rows) if a.log else None
        if a.json:
            print(json.dumps({"rows": rows, "mlflow_compare_url": url, "plot": a.plot, "run_id": run_id}, indent=2),
                  file=out)
        else:
            print(_table(rows), file=out)
            for label, value in (("MLflow run comparison", url), ("plot", a.plot), ("comparison run", run_id)):
                if value:
                    print(f"{label}: {value}", file=out)
            for kind in kinds:  # the registry's own side-by-side page, per registered model
                with contextlib.suppress(RegistryError):
                    print(f"MLflow {kind} versions: {reg.compare_url(a.project, None, kind)}", file=out)
    elif cmd == "promote":
        decision = None
        if a.decision:
            try:
                with open(a.decision) as f:
                    decision = json.load(f)
            except (OSError, ValueError) as e:
                raise RegistryError(f"{a.decision}: cannot read the decision record: {e}") from None
        res = reg.promote(a.project, a.candidate, decision, policy=_policy(a), force=a.force, by=a.by,
                          reason=a.reason, manifest_path=a.manifest)
        d = res.details.get("decision") or {}
        if a.json:
            print(json.dumps(dataclasses.asdict(res), indent=2, default=str), file=out)
        else:
            if d.get("rules"):
                from evaluation.gate import summary

                print(summary(d), file=out)
            print(res.message, file=out)
        return 0 if res.promoted else 1
    elif cmd == "rollback":
        res = reg.rollback(a.project, by=a.by, reason=a.reason, manifest_path=a.manifest)
        print(json.dumps(dataclasses.asdict(res), indent=2, default=str) if a.json else res.message, file=out)
    else:
        print(f"h3ops: registry has no command {cmd!r}", file=sys.stderr)
        return 2
    return 0
