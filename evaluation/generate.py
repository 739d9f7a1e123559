"""Batched greedy generation on a loaded Hugging Face causal LM (left padding, stop strings)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Generation:
    text: str
    new_tokens: int


def render(tok, prompt: "str | list[dict]", chat: bool) -> str:
    """The prompt as the model sees it: through its chat template when it has one and `chat` is set.
    A list of messages is a conversation (multi-turn benchmarks); without a chat template its turns
    are laid out as plain text."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if chat and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
    return prompt


def truncate(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def generate(model, tok, prompts: "list[str] | list[list[dict]]", *, max_new_tokens: int = 128, batch_size: int = 8,
             chat: bool = True, stops: list[str] | None = None, max_prompt_tokens: int = 1024,
             sampling: dict | None = None) -> list[Generation]:
    """Continuations, batched; prompts are sorted by length so padding stays small. Greedy unless
    `sampling` ({"temperature", "top_p"}) is given; then the caller seeds torch for reproducibility."""
    import torch

    stops = stops or []
    decoding = {"do_sample": True, **sampling} if sampling else {"do_sample": False}
    texts = [render(tok, p, chat) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[Generation | None] = [None] * len(texts)
    pad_side, tok.padding_side = tok.padding_side, "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_prompt_tokens, add_special_tokens=not chat).to(model.device)
            with torch.inference_mode():
                seq = model.generate(**enc, max_new_tokens=max_new_tokens, **decoding,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     stop_strings=stops or None, tokenizer=tok if stops else None)
            new = seq[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                ids = [t for t in new[row].tolist() if t != tok.pad_token_id]
                if tok.eos_token_id in ids:
                    ids = ids[:ids.index(tok.eos_token_id)]
                out[i] = Generation(truncate(tok.decode(ids, skip_special_tokens=True), stops), len(ids))
    finally:
        tok.padding_side = pad_side
    return out  # type: ignore[return-value]
