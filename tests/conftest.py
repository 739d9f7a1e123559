"""Shared test setup: offline, self-contained Airflow home, tiny real models.

Fixture modules in tests/fixtures/ (servers, data, …) are loaded as pytest plugins so every test
file can use them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports Hugging Face, Airflow or MLflow.
_HOME = Path(tempfile.mkdtemp(prefix="h3ops-test-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": str(_HOME / "hf"),
    "TOKENIZERS_PARALLELISM": "false",
    "AIRFLOW_HOME": str(_HOME / "airflow"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1] / "dags"),
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
})
# A test must never write to a tracking server it did not start itself.
for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_S3_ENDPOINT_URL", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
    os.environ.pop(var, None)

import pytest  # noqa: E402

pytest_plugins = [f"tests.fixtures.{p.stem}" for p in sorted((Path(__file__).parent / "fixtures").glob("*.py"))
                  if p.stem != "__init__"]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint (2 layers, hidden 64, tied embeddings), built once per session."""
    from h3ops.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "base")


@pytest.fixture(scope="session")
def tiny_candidates(tiny_base, tmp_path_factory) -> list[Path]:
    """Three candidates fine-tuned from tiny_base (seeded random task vectors)."""
    from h3ops.testing import make_candidate

    root = tmp_path_factory.mktemp("candidates")
    dims = ["helpfulness", "honesty", "harmlessness"]
    return [make_candidate(tiny_base, root / d, seed=i + 1, dimension=d) for i, d in enumerate(dims)]
