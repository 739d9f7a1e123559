"""3H scores from per-benchmark metrics, exactly as spec/scoring.md (the paper's tables).

A `Suite` is a declared object: which benchmarks count for which dimension, and how each is scaled.
Suites are registered by name (`register_suite`) so other modules can declare their own (a
CPU-sized suite, a custom one); the default is the paper's eleven-benchmark `full-3h`.
Scores carry the suite's name and digest so the gate can refuse to compare across suites.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from h3ops.digest import digest_json
from h3ops.names import DIMENSIONS
AVERAGE_KEYS = ("helpful_avg", "honest_avg", "harmless_avg", "avg")
_DIM_AVG = dict(zip(DIMENSIONS, AVERAGE_KEYS))


class ScoringError(ValueError):
    """Metrics that cannot be scored; the message names the offending benchmarks."""


@dataclass(frozen=True)
class Suite:
    """Benchmarks per dimension plus scale rules.

    `scale` multiplies a metric before averaging (e.g. {"mt_bench": 10.0} puts MT-Bench on 0-100;
    the paper keeps it on 1-10, so the default suite has no rule). `ranges` bounds the raw metric so
    a fraction passed where a percentage is expected, or a 0-100 MT-Bench, is caught early.
    """
    name: str
    benchmarks: Mapping[str, tuple[str, ...]]
    scale: Mapping[str, float] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    version: str = "1"
    description: str = ""

    def __post_init__(self) -> None:
        unknown_dims = sorted(set(self.benchmarks) - set(DIMENSIONS))
        if unknown_dims:
            raise ScoringError(f"suite {self.name!r}: unknown dimension(s) {unknown_dims}; use {list(DIMENSIONS)}")
        empty = [d for d in DIMENSIONS if not self.benchmarks.get(d)]
        if empty:
            # A dimension without benchmarks would silently score zero; the spec makes it an error.
            raise ScoringError(f"suite {self.name!r}: dimension(s) {empty} have no benchmark")
        keys = [k for d in DIMENSIONS for k in self.benchmarks[d]]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ScoringError(f"suite {self.name!r}: benchmark(s) {dup} listed more than once")
        stray = sorted((set(self.scale) | set(self.ranges)) - set(keys))
        if stray:
            raise ScoringError(f"suite {self.name!r}: scale/range rules for benchmarks not in the suite: {stray}")
        # Freeze the mappings so the digest cannot drift after registration.
        object.__setattr__(self, "benchmarks", {d: tuple(self.benchmarks[d]) for d in DIMENSIONS})
        object.__setattr__(self, "scale", dict(self.scale))
        object.__setattr__(self, "ranges", {k: (float(lo), float(hi)) for k, (lo, hi) in self.ranges.items()})

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for d in DIMENSIONS for k in self.benchmarks[d])

    @property
    def digest(self) -> str:
        """Identity of what the scores mean: any change to benchmarks or scale rules changes it."""
        return digest_json({"name": self.name, "version": self.version, "benchmarks": self.benchmarks,
                            "scale": self.scale, "ranges": self.ranges})

    def options(self) -> dict[str, Any]:
        """Recorded with the scores (e.g. whether MT-Bench was rescaled ×10)."""
        return {"scale": dict(self.scale), "version": self.version}


@dataclass(frozen=True)
class Scores:
    helpful_avg: float
    honest_avg: float
    harmless_avg: float
    avg: float
    metrics: dict[str, float]
    suite: str
    suite_digest: str
    options: dict[str, Any] = field(default_factory=dict)

    def dimension(self, dim: str) -> float:
        return getattr(self, _DIM_AVG[dim])

    def averages(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in AVERAGE_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Scores":
        missing = [k for k in cls.__dataclass_fields__ if k not in data and k != "options"]
        if missing:
            raise ScoringError(f"score record lacks field(s) {missing}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


# The paper's suite (Section 4.1, Appendix C.2): MT-Bench stays on its raw 1-10 scale.
FULL_3H = Suite(
    name="full-3h",
    benchmarks={
        "helpfulness": ("math", "gsm8k", "arc_easy", "arc_challenge", "mmlu", "mbpp_plus",
                        "humaneval_plus", "mt_bench"),
        "honesty": ("halueval_wild",),
        "harmlessness": ("salad_bench", "or_bench"),
    },
    ranges={"mt_bench": (0.0, 10.0), **{k: (0.0, 100.0) for k in (
        "math", "gsm8k", "arc_easy", "arc_challenge", "mmlu", "mbpp_plus", "humaneval_plus",
        "halueval_wild", "salad_bench", "or_bench")}},
    description="the paper's eleven 3H benchmarks, MT-Bench on 1-10",
)

_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite, *, replace: bool = False) -> Suite:
    """Make a suite available by name. Re-registering an identical suite is a no-op."""
    old = _SUITES.get(suite.name)
    if old is not None and old.digest != suite.digest and not replace:
        raise ScoringError(f"suite {suite.name!r} is already registered with different benchmarks "
                           f"(digest {old.digest[:19]}…); pick another name or a new version")
    _SUITES[suite.name] = suite
    return suite


def get_suite(name: str | Suite | None = None) -> Suite:
    if isinstance(name, Suite):
        return name
    name = name or FULL_3H.name
    try:
        return _SUITES[name]
    except KeyError:
        raise ScoringError(f"unknown suite {name!r}; registered: {sorted(_SUITES)}") from None


def suites() -> list[str]:
    return sorted(_SUITES)


register_suite(FULL_3H)
# The ×10 MT-Bench option the spec allows; a different suite digest, so never mixed with full-3h.
register_suite(Suite(name="full-3h-mt10", benchmarks=FULL_3H.benchmarks, scale={"mt_bench": 10.0},
                     ranges=FULL_3H.ranges, description="full-3h with MT-Bench rescaled to 0-100"))


def measured_digest(suite: str | Suite | None, run_digest: str | None = None) -> str:
    """The suite digest scores carry: the suite's own, folded with how the metrics were measured."""
    s = get_suite(suite)
    return s.digest if run_digest is None else digest_json({"suite": s.digest, "run": run_digest})


def aggregate(metrics: Mapping[str, float], suite: str | Suite | None = None, *,
              run_digest: str | None = None) -> Scores:
    """Per-benchmark metrics → the four 3H averages of the suite (default `full-3h`).

    Missing, unknown, non-numeric, non-finite or out-of-range metrics raise ScoringError naming them:
    an incomplete evaluation must never produce a score that could pass the gate.
    `run_digest` identifies how the metrics were measured (data, limit, judge, generation settings);
    it is folded into the scores' suite digest so the gate never compares runs measured differently.
    """
    s = get_suite(suite)
    missing = [k for k in s.keys if k not in metrics]
    unknown = sorted(k for k in metrics if k not in s.keys and k not in AVERAGE_KEYS)
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unknown:
        problems.append(f"unknown {unknown}")
    values: dict[str, float] = {}
    bad, out_of_range = [], []
    for k in s.keys:
        if k not in metrics:
            continue
        try:
            v = float(metrics[k])
        except (TypeError, ValueError):
            bad.append(f"{k}={metrics[k]!r}")
            continue
        if not math.isfinite(v):
            bad.append(f"{k}={v}")
            continue
        lo, hi = s.ranges.get(k, (-math.inf, math.inf))
        if not lo <= v <= hi:
            out_of_range.append(f"{k}={v} not in [{lo:g}, {hi:g}]")
        values[k] = v
    if bad:
        problems.append(f"non-finite or non-numeric {bad}")
    if out_of_range:
        problems.append(f"out of range {out_of_range}")
    if problems:
        raise ScoringError(f"suite {s.name!r}: cannot score metrics: " + "; ".join(problems))

    dims = {d: _mean([values[k] * s.scale.get(k, 1.0) for k in s.benchmarks[d]]) for d in DIMENSIONS}
    return Scores(
        helpful_avg=dims["helpfulness"], honest_avg=dims["honesty"], harmless_avg=dims["harmlessness"],
        avg=_mean(list(dims.values())), metrics=values, suite=s.name,
        suite_digest=measured_digest(s, run_digest),
        options=s.options() if run_digest is None else {**s.options(), "run_digest": run_digest},
    )
