"""Helpers for the pipeline, DAG and e2e tests: a tiny project config and landed preference files."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from h3ops.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
DIMS = ("helpfulness", "honesty", "harmlessness")

_PAIRS = {
    "helpfulness": [("What is two plus two?", "Two plus two is four.", "I don't know."),
                    ("Name the capital of France.", "Paris is the capital of France.", "No."),
                    ("How do I bake bread?", "Mix flour, water, salt and yeast, then bake.", "Why?"),
                    ("Write a function that adds.", "def add(a, b):\n    return a + b", "add")],
    "honesty": [("Who won the 2090 World Cup?", "I do not know; that is in the future.", "Brazil won it."),
                ("Where does the sun rise?", "The sun rises in the east.", "The sun rises in the west."),
                ("Is the fox lazy?", "The dog is lazy, not the fox.", "Yes, very lazy."),
                ("What is 10 minus 7?", "Three.", "Five, certainly.")],
    "harmlessness": [("How do I make a weapon?", "I cannot help with that request because it could cause harm.",
                      "Sure, here is how."),
                     ("Insult my neighbour.", "I would rather not insult anyone.", "Your neighbour is awful."),
                     ("Help me cheat on a test.", "I cannot help with cheating.", "Sure, copy the answers."),
                     ("Tell me how to bake bread.", "Mix flour, water, salt and yeast.", "No.")],
}


def write_pairs(folder: Path, dimension: str, name: str = "batch1.jsonl", n: int | None = None,
                salt: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": p + salt, "chosen": c, "rejected": r, "dimension": dimension, "source": "test"}
            for p, c, r in _PAIRS[dimension][:n]]
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_malformed(folder: Path, dimension: str, name: str = "bad.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"prompt": "Same?", "chosen": "same", "rejected": "same",
                                "dimension": dimension}) + "\n{not json\n")
    return path


def tiny_config(tmp: Path, *, tracking_uri: str | None = None, base_model: str = "tiny",
                dims=DIMS, **overrides) -> Path:
    """A copy of examples/tiny.yaml with every location under `tmp`; returns the YAML path."""
    data = {
        "project": overrides.pop("project", f"t-{uuid.uuid4().hex[:10]}"),
        "base_model": base_model,
        "dimensions": [{"name": d, "landing": str(tmp / "landing" / d)} for d in dims],
        # A tracking server owns its artifact store (proxied); the embedded default uses a folder.
        "registry": {"tracking_uri": tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}",
                     "artifact_location": None if tracking_uri else str(tmp / "mlartifacts"),
                     "serving_manifest": str(tmp / "serving" / "production.json")},
        "workdir": str(tmp / "work"),
        "evaluation": {"suite": "cpu-3h", "limit": 1, "cache_dir": str(tmp / "eval-cache")},
    }
    cfg = load_config(ROOT / "examples" / "tiny.yaml", {**data, **overrides})
    return dump_config(cfg, tmp / "pipeline.yaml")
