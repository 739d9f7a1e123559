"""One loaded model version answering completions: transformers on CPU (and tests), any device.

An engine is created from a verified checkpoint folder, proves it can generate before it is ever
switched to (`warm_up`), and is closed only after the last request using it has finished.
"""
from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class EngineError(RuntimeError):
    """A request the model cannot answer (e.g. chat without a chat template); the message says why."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"


def _stop_prefix(text: str, stop: list[str] | None) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    return max((k for s in stop or [] for k in range(1, min(len(s) - 1, len(text)) + 1) if text.endswith(s[:k])),
               default=0)


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
        return self.complete(self.chat_prompt(messages), add_special_tokens=False, **kw)

    def stream_chat(self, messages: list[dict], **kw) -> Iterator[str | Completion]:
        return self.stream(self.chat_prompt(messages), add_special_tokens=False, **kw)

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError("this model has no chat template: use /v1/completions")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _prepare(self, prompt: str, max_tokens: int, temperature: float, top_p: float, add_special_tokens: bool):
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(self.device)
        n_prompt = int(enc["input_ids"].shape[1])
        if self.max_positions and n_prompt + max_tokens > self.max_positions:
            raise EngineError(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                              f"context of {self.max_positions} tokens")
        params = {"do_sample": temperature > 0, "max_new_tokens": max_tokens,
                  "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if temperature > 0:
            params.update(temperature=temperature, top_p=top_p)
        else:  # a checkpoint's generation_config may carry sampling defaults: greedy means greedy
            params.update(temperature=None, top_p=None, top_k=None)
        return enc, n_prompt, params

    def _finish(self, new, n_prompt: int, stop: list[str] | None) -> Completion:
        eos = self.tokenizer.eos_token_id
        ended = eos is not None and bool((new == eos).any())
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if ended else "length"
        for s in stop or []:
            if s and s in text:
                text, finish = text[: text.index(s)], "stop"
        return Completion(text, n_prompt, int(new.shape[0]), finish)

    def complete(self, prompt: str, *, max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, add_special_tokens: bool = True) -> Completion:
        import torch

        enc, n_prompt, params = self._prepare(prompt, max_tokens, temperature, top_p, add_special_tokens)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**enc, **params)
        return self._finish(out[0, n_prompt:], n_prompt, stop)

    def stream(self, prompt: str, *, max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
               stop: list[str] | None = None, add_special_tokens: bool = True) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then the whole Completion (what `complete` returns).

        Bad input raises here, before anything is streamed. Pieces stop at a stop string;
        generation itself runs to its end (bounded by max_tokens)."""
        prepared = self._prepare(prompt, max_tokens, temperature, top_p, add_special_tokens)
        return self._pieces(*prepared, stop)

    def _pieces(self, enc, n_prompt: int, params: dict, stop: list[str] | None) -> Iterator[str | Completion]:
        import queue

        import torch
        from transformers.generation.streamers import BaseStreamer

        # Not TextIteratorStreamer: it cuts pieces by its own rules (words, CJK) and cannot hold
        # back the start of a stop string. Here the text generated so far is decoded whole each
        # time and only a stable prefix is sent (no trailing partial character, no trailing start
        # of a stop string): the pieces add up to exactly the answer.
        tokens: queue.Queue = queue.Queue()

        class _Tokens(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate() hands over the prompt first
                    self.prompt_seen = True
                    return
                tokens.put(value.reshape(-1).tolist())

            def end(self):
                tokens.put(None)

        result: dict = {}

        def run():
            try:
                with self._lock, torch.inference_mode():
                    result["out"] = self.model.generate(**enc, **params, streamer=_Tokens())
            except BaseException as e:  # surfaced to the reader below
                result["error"] = e
                tokens.put(None)

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        ids: list[int] = []
        sent, stopped = "", False
        while (item := tokens.get(timeout=600)) is not None:
            ids += item
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if stopped or text.endswith("\ufffd"):
                continue
            cut = min((text.index(s) for s in stop or [] if s and s in text), default=None)
            if cut is not None:
                text, stopped = text[:cut], True
            else:  # the text may end with the start of a stop string: hold that back
                text = text[:len(text) - _stop_prefix(text, stop)]
            if text.startswith(sent) and len(text) > len(sent):
                yield text[len(sent):]
                sent = text
        worker.join()
        if "error" in result:
            raise result["error"]
        final = self._finish(result["out"][0, n_prompt:], n_prompt, stop)
        if final.text.startswith(sent) and len(final.text) > len(sent):
            yield final.text[len(sent):]
        yield final

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
