"""The canonical preference-pair row and the alignment dimensions of the paper's Table 1.

A row is a JSON object:
  id         stable identifier (derived from the content when the source has none)
  prompt     a string, or a list of chat messages [{"role", "content"}] ending before the answer
  chosen     the preferred answer (string)
  rejected   the dispreferred answer (string)
  dimension  one of ALL_DIMENSIONS
  source     where it came from (dataset name or file)
  meta       optional dict (scores, labels) carried along, never trained on
"""
from __future__ import annotations

from typing import Any

from h3ops.digest import digest_json
from h3ops.names import ALL_DIMENSIONS, DIMENSIONS, MIXES  # noqa: F401 - the one vocabulary, used here

# A dataset built by a data-mixture baseline holds rows of several dimensions.
MIXTURE = "mixture"
DATASET_DIMENSIONS = ALL_DIMENSIONS + (MIXTURE,)

REQUIRED = ("prompt", "chosen", "rejected")
FIELDS = ("id", "prompt", "chosen", "rejected", "dimension", "source", "meta")
ROLES = ("system", "user", "assistant")


def row_id(prompt: Any, chosen: str, rejected: str) -> str:
    """Content-derived id: the same pair always gets the same id, whatever file it came from."""
    return "pair-" + digest_json([prompt, chosen, rejected]).split(":", 1)[1][:20]


def make_row(prompt: Any, chosen: str, rejected: str, *, dimension: str | None, source: str,
             id: str | None = None, meta: dict | None = None) -> dict:
    row = {"id": id or row_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen,
           "rejected": rejected, "dimension": dimension, "source": source}
    if meta:
        row["meta"] = meta
    return row


def prompt_text(prompt: Any) -> str:
    """The prompt flattened to text (for scoring and length checks)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def check_dimension(dimension: str, *, allow_mixture: bool = True) -> str:
    allowed = DATASET_DIMENSIONS if allow_mixture else ALL_DIMENSIONS
    if dimension not in allowed:
        raise ValueError(f"unknown dimension {dimension!r}; expected one of {', '.join(allowed)}")
    return dimension


def covers(dataset_dimension: str, row_dimension: str) -> bool:
    """May a row of `row_dimension` sit in a dataset declared as `dataset_dimension`?"""
    return dataset_dimension == MIXTURE or row_dimension == dataset_dimension
