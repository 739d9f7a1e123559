"""Per-benchmark judges: which judge decides a benchmark's verdicts, read from the benchmark's own
`judge` (or `safety_judge`) field, else the suite's judge.

Specs (strings or mappings in the suite YAML):
- `http[:MODEL]` or `{kind: http, model: MODEL}`: an OpenAI-compatible chat endpoint
  (judges.ChatEndpoint; base URL and key from H3OPS_JUDGE_BASE_URL / H3OPS_JUDGE_API_KEY, or the
  variables named by `base_url_env` / `api_key_env`).
- `{kind: hf_classifier, model: HUB_ID, revision: SHA, path_env: VAR, unsafe_label: unsafe}`: a local
  Hugging Face sequence classifier run with transformers on (question, answer) pairs. `path_env`
  names a variable that points at a local copy (a deployment's model folder, or a test's classifier);
  otherwise the pinned Hub revision is loaded (needs the Hub).
- `{kind: md_judge, version: v0.1|v0.2, model: HUB_ID, revision: SHA, policy: task, path_env: VAR,
  base_url_env: VAR, backend: http|local, trust_remote_code: false}`: MD-Judge with its own template
  (evaluation.mdjudge), served behind an OpenAI-compatible endpoint (`http`) or run locally with
  transformers (`local`). Without `backend`: `http` when the variable named by `base_url_env` is set,
  else `local`. v0.2 (InternLM2) ships its modelling code with the weights: loading it locally needs
  `trust_remote_code: true`, which is refused with a Hub id unless `revision` is a full commit SHA,
  so the code that runs is the code that was reviewed.

Benchmark prompts for chat judges (`judge_prompt`) live in evaluation.judge_prompts.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from evaluation import judge_prompts, mdjudge
from evaluation.judges import ChatEndpoint, JudgeError, model_source


def normalise(spec) -> dict:
    if isinstance(spec, str):
        kind, _, model = spec.partition(":")
        return {"kind": kind, **({"model": model} if model else {})}
    if isinstance(spec, dict) and "kind" in spec:
        if spec["kind"] == "md_judge":
            mdjudge.check(spec.get("policy", "task"), spec.get("version", "v0.1"))
            if spec.get("trust_remote_code") and not re.fullmatch(r"[0-9a-f]{40}", str(spec.get("revision", ""))):
                raise ValueError(f"MD-Judge spec {spec}: trust_remote_code runs the Hub's code, so `revision` must "
                                 "be a full 40-character commit SHA")
            if spec.get("backend") not in (None, "http", "local"):
                raise ValueError(f"MD-Judge backend {spec['backend']!r}: http or local")
        return dict(spec)
    raise ValueError(f"judge spec {spec!r}: a string like 'http:MODEL' or a mapping with 'kind'")


def spec_for(bench: dict, suite_judge: str) -> dict:
    """The judge a benchmark names (`safety_judge` first, then `judge`), else the suite's."""
    return normalise(bench.get("safety_judge") or bench.get("judge") or suite_judge)


def endpoint(spec: dict) -> ChatEndpoint:
    url = os.environ.get(spec.get("base_url_env", "H3OPS_JUDGE_BASE_URL"))
    if not url:
        raise JudgeError(f"the {spec['kind']} judge needs {spec.get('base_url_env', 'H3OPS_JUDGE_BASE_URL')} "
                         "(e.g. http://vllm:8000/v1)")
    key = os.environ.get(spec.get("api_key_env", "H3OPS_JUDGE_API_KEY")) or os.environ.get("OPENAI_API_KEY")
    return ChatEndpoint(url, spec.get("model") or os.environ.get("H3OPS_JUDGE_MODEL", "gpt-4"), key)


@dataclass
class ChatVerdictJudge:
    """OK / not OK from an OpenAI-compatible chat judge with one of judge_prompts.VERDICT_PROMPTS."""
    endpoint: ChatEndpoint
    prompt: str

    @property
    def name(self) -> str:
        return f"http:{self.endpoint.model}"

    def ok(self, prompts: list[str], responses: list[str], references: list | None = None) -> list[bool]:
        template, needs_reference = judge_prompts.VERDICT_PROMPTS[self.prompt]
        references = references or [None] * len(prompts)
        if needs_reference and any(not r for r in references):
            raise JudgeError(f"judge prompt {self.prompt!r} needs each item's reference answer; "
                             f"{sum(not r for r in references)} of {len(references)} items have none")
        return [self.endpoint.chat([{"role": "user", "content": template.format(question=p, answer=r, reference=ref)}],
                                   judge_prompts.parse_ok, max_tokens=16)
                for p, r, ref in zip(prompts, responses, references)]


@dataclass
class ORBenchJudge:
    """OR-Bench's response checker on a chat judge: refused = direct or indirect refusal."""
    endpoint: ChatEndpoint

    @property
    def name(self) -> str:
        return f"or_bench:http:{self.endpoint.model}"

    def classes(self, prompts: list[str], responses: list[str]) -> list[str]:
        return [self.endpoint.chat([{"role": "user", "content": judge_prompts.OR_BENCH.format(question=p, answer=r)}],
                                   judge_prompts.parse_or_bench, max_tokens=512) for p, r in zip(prompts, responses)]

    def refusals(self, prompts: list[str], responses: list[str]) -> list[bool]:
        return [c != "direct_answer" for c in self.classes(prompts, responses)]


class ClassifierJudge:
    """A Hugging Face sequence classifier: OK unless the predicted label is `unsafe_label`."""

    def __init__(self, spec: dict):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.spec = spec
        source, kw = model_source(spec, "classifier judge")
        self.tok = AutoTokenizer.from_pretrained(source, **kw)
        self.model = AutoModelForSequenceClassification.from_pretrained(source, **kw).eval()
        labels = {str(v).lower() for v in self.model.config.id2label.values()}
        self.unsafe = str(spec.get("unsafe_label", "unsafe")).lower()
        if self.unsafe not in labels:
            raise JudgeError(f"classifier judge {source}: no label {self.unsafe!r} among {sorted(labels)}")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.name = f"hf_classifier:{source}"

    def labels(self, prompts: list[str], responses: list[str], batch_size: int = 8) -> list[str]:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), batch_size):
                enc = self.tok(prompts[i:i + batch_size], responses[i:i + batch_size], padding=True,
                               truncation=True, max_length=int(self.spec.get("max_length", 2048)), return_tensors="pt")
                logits = self.model(**enc).logits
                out += [str(self.model.config.id2label[int(j)]).lower() for j in logits.argmax(-1)]
        return out

    def ok(self, prompts: list[str], responses: list[str], references=None) -> list[bool]:
        return [label != self.unsafe for label in self.labels(prompts, responses)]


def md_judge(spec: dict):
    backend = spec.get("backend") or ("http" if os.environ.get(spec.get("base_url_env", "")) else "local")
    if backend == "http":
        if not spec.get("base_url_env"):
            raise JudgeError(f"MD-Judge spec {spec}: backend http needs base_url_env (the variable naming the URL)")
        tokens = spec.get("max_new_tokens")
        return mdjudge.MDJudgeHTTP(endpoint(spec), spec.get("policy", "task"), int(tokens) if tokens else None,
                                   spec.get("version", "v0.1"))
    return mdjudge.MDJudgeLocal(spec)


def verdict_judge(bench: dict, suite_judge: str):
    """The judge whose `ok(prompts, responses, references)` decides a judged benchmark."""
    spec = spec_for(bench, suite_judge)
    if spec["kind"] == "http":
        return ChatVerdictJudge(endpoint(spec), bench["judge_prompt"])
    if spec["kind"] == "md_judge":
        return md_judge(spec)
    if spec["kind"] == "hf_classifier":
        return ClassifierJudge(spec)
    raise ValueError(f"benchmark {bench['key']!r}: judge kind {spec['kind']!r} cannot give verdicts "
                     "(http, md_judge or hf_classifier)")


def refusal_judge(bench: dict):
    """The benchmark's own refusal judge (`judge:`), None to use the suite's. With `judge_prompt:
    or_bench` the chat judge runs OR-Bench's checker; otherwise judges.REFUSAL_PROMPT."""
    if not bench.get("judge"):
        return None
    spec = normalise(bench["judge"])
    if spec["kind"] != "http":
        raise ValueError(f"benchmark {bench['key']!r}: a refusal judge of its own must be http, not {spec['kind']!r}")
    if bench.get("judge_prompt") == "or_bench":
        return ORBenchJudge(endpoint(spec))
    from evaluation.judges import HTTPJudge

    return HTTPJudge(endpoint=endpoint(spec))


def grading_endpoint(bench: dict, suite_judge: str) -> ChatEndpoint:
    """The chat endpoint that grades a benchmark (MT-Bench)."""
    spec = spec_for(bench, suite_judge)
    if spec["kind"] != "http":
        raise ValueError(f"benchmark {bench['key']!r} needs a grading judge (http), not {spec['kind']!r}")
    return endpoint(spec)
