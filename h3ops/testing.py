"""Tiny real models for tests and the demo: Llama-architecture, BPE tokenizer trained offline.

Nothing here downloads anything; the tokenizer is trained on a fixed corpus so it is identical
on every machine.
"""
from __future__ import annotations

import json
from pathlib import Path

from h3ops.checkpoint import Manifest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Helpful answers explain the steps clearly and honestly.",
    "I cannot help with that request because it could cause harm.",
    "Honest models say when they do not know the answer.",
    "Question: what is two plus two? Answer: four.",
    "Paris is the capital of France. The sun rises in the east.",
    "def add(a, b):\n    return a + b\n",
    "Sure, here is how to bake bread: mix flour, water, salt and yeast.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 A B C D yes no true false",
]


def make_tokenizer(vocab_size: int = 320, *, extra_text: tuple[str, ...] = (), special: tuple[str, ...] = (),
                   added: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with ChatML special tokens, trained on a fixed corpus.

    `extra_text` joins the corpus (a different vocabulary), `special` / `added` become added
    special / plain tokens: tokenizers that overlap with the default one but differ from it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((_CORPUS + list(extra_text)) * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    if special:
        fast.add_tokens(list(special), special_tokens=True)
    if added:
        fast.add_tokens(list(added))
    return fast


def make_tiny_llama(path: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4,
                    intermediate: int | None = None, vocab_size: int = 320, seed: int = 0,
                    dtype: str = "float32", tie_embeddings: bool = True,
                    max_shard_size: str | None = None, tokenizer=None) -> Path:
    """Build and save a randomly initialised tiny Llama (a real HF checkpoint with safetensors);
    its vocabulary is `tokenizer`'s when given (see make_tokenizer), else the default one's."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tokenizer if tokenizer is not None else make_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=512, tie_word_embeddings=tie_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    tok.save_pretrained(path)
    Manifest(kind="base", produced_by="h3ops.testing.make_tiny_llama",
             settings={"layers": layers, "hidden": hidden, "seed": seed, "dtype": dtype}).write(path)
    return path


def make_candidate(base: str | Path, out: str | Path, *, seed: int, scale: float = 0.02,
                   dimension: str | None = None) -> Path:
    """A 'fine-tuned' candidate: the base plus a seeded random task vector, same files otherwise."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from h3ops.checkpoint import weight_files
    from h3ops.digest import digest_dir

    base, out = Path(base), Path(out)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("*.safetensors", "h3ops.json"))
    gen = torch.Generator().manual_seed(seed)
    for f in weight_files(base):
        tensors = load_file(f)
        moved = {k: (v.float() + scale * torch.randn(v.shape, generator=gen)).to(v.dtype) for k, v in tensors.items()}
        save_file(moved, out / f.name, metadata={"format": "pt"})
    Manifest(kind="candidate", produced_by="h3ops.testing.make_candidate", dimension=dimension,
             parents=[{"uri": str(base), "digest": digest_dir(base)}],
             settings={"seed": seed, "scale": scale}).write(out)
    return out


def read_config(path: str | Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def make_tiny_safety_classifier(path: str | Path) -> Path:
    """A tiny Llama sequence classifier (labels safe/unsafe) with a rule that can be computed by hand:
    no transformer layers, so its verdict depends on the last token only — `unsafe` when that token's
    id is odd. A stand-in for MD-Judge in tests and offline benchmarks."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=0,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id,
                      id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    model = LlamaForSequenceClassification(cfg)
    odd = torch.arange(len(tok)) % 2 == 1
    with torch.no_grad():
        emb = torch.zeros(len(tok), 8)
        emb[odd, 0] = 1.0  # odd ids → feature 0
        emb[~odd, 1] = 1.0  # even ids → feature 1
        model.model.embed_tokens.weight.copy_(emb)
        model.score.weight.zero_()
        model.score.weight[0, 1] = 1.0  # safe ← feature 1
        model.score.weight[1, 0] = 1.0  # unsafe ← feature 0
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
