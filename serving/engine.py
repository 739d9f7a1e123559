"""One loaded model version answering completions: transformers on CPU (and tests), any device.

An engine is created from a verified checkpoint folder, proves it can generate before it is ever
switched to (`warm_up`), and is closed only after the last request using it has finished.
"""
from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path


class EngineError(RuntimeError):
    """A request the model cannot answer (e.g. chat without a chat template); the message says why."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"


class TransformersEngine:
    """A Hugging Face causal LM loaded in this process."""

    def __init__(self, folder: str | Path, *, device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(device).eval()
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        # Generation on one model from many request threads at once only contends for the same
        # cores; one at a time keeps latency predictable and memory flat.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Generate one token: a version whose weights do not run is never switched to."""
        self.complete("Hello", max_tokens=1)

    def chat(self, messages: list[dict], **kw) -> Completion:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError("this model has no chat template: use /v1/completions")
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.complete(prompt, add_special_tokens=False, **kw)

    def complete(self, prompt: str, *, max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, add_special_tokens: bool = True) -> Completion:
        import torch

        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(self.device)
        n_prompt = int(enc["input_ids"].shape[1])
        if self.max_positions and n_prompt + max_tokens > self.max_positions:
            raise EngineError(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                              f"context of {self.max_positions} tokens")
        sample = temperature > 0
        params = {"do_sample": sample, "max_new_tokens": max_tokens,
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if sample:
            params.update(temperature=temperature, top_p=top_p)
        else:  # a checkpoint's generation_config may carry sampling defaults: greedy means greedy
            params.update(temperature=None, top_p=None, top_k=None)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**enc, **params)
        new = out[0, n_prompt:]
        eos = self.tokenizer.eos_token_id
        ended = eos is not None and bool((new == eos).any())
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if ended else "length"
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return Completion(text, n_prompt, int(new.shape[0]), finish)

    def close(self) -> None:
        """Drop the weights; memory returns once no request holds the engine any more."""
        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
