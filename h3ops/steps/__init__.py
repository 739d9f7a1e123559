"""Pipeline steps: plain functions of (config, URIs) → URIs/ids, registered by name.

A DAG task calls them in-process; `h3ops step <name> --config … --inputs JSON` runs the same
function in a Celery worker, a Kubernetes pod or a shell. Steps exchange only small JSON values
(paths, `models:/name/version` URIs, digests), never tensors. Heavy libraries are imported inside
the functions, so importing this package costs nothing.
"""
from __future__ import annotations

from typing import Any, Callable

STEPS: dict[str, Callable[..., Any]] = {}


def step(name: str):
    """Register a step function under `name` (the CLI and the operators look it up here)."""
    def wrap(fn):
        if name in STEPS:
            raise ValueError(f"step {name!r} registered twice")
        STEPS[name] = fn
        return fn
    return wrap


def get_step(name: str) -> Callable[..., Any]:
    _load_all()
    try:
        return STEPS[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(sorted(STEPS))}") from None


def _load_all() -> None:
    from h3ops.steps import benchmark, evaluate, gate, ingest, merge, mixture, register, serve, train  # noqa: F401
