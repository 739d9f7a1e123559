"""The files mergekit leaves beside a merged model: a model card and the config it ran.

`README.md` says, for a person browsing the folder or a Hub page, what the model is a merge of and
how; `mergekit_config.yml` is the config as given, so `mergekit-yaml mergekit_config.yml` (or
`h3ops merge`) can rerun it. `h3ops.json` stays the machine-readable lineage; these are for people.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

CARD = "README.md"
CONFIG = "mergekit_config.yml"


def write_card(folder: Path, *, method: str, parents: list[dict], raw_config: dict, seed: int) -> None:
    """Write README.md and mergekit_config.yml into `folder` (the merge's temporary output)."""
    # A config given from Python may hold Paths: write what they print as.
    config_text = yaml.safe_dump(json.loads(json.dumps(raw_config, default=str)), sort_keys=False)
    (folder / CONFIG).write_text(config_text)
    base = [p for p in parents if p["role"] == "base"]
    candidates = [p for p in parents if p["role"] != "base"]
    front = yaml.safe_dump({"base_model": [p["uri"] for p in parents], "library_name": "transformers",
                            "tags": ["h3ops", "mergekit", "merge"]}, sort_keys=False)
    on_base = f", from the common base `{base[0]['uri']}`" if base else ""
    rows = "\n".join(f"| `{p['uri']}` | {p['role']} | `{p['digest']}` |" for p in base + candidates)
    (folder / CARD).write_text(
        f"---\n{front}---\n# Merged model\n\n"
        f"A merge of {len(candidates)} model(s) with the `{method}` method{on_base}, made by h3ops "
        f"(seed {seed}). Its lineage, parameters and parents' content digests are in `h3ops.json`.\n\n"
        f"## Parents\n\n| model | role | content digest |\n|---|---|---|\n{rows}\n\n"
        f"## Configuration\n\nThe configuration that produced it (`{CONFIG}`):\n\n```yaml\n{config_text}```\n")
