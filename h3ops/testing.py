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


def _tiny_classifier(labels: tuple[str, ...], *, hidden: int, layers: int):
    """A tiny Llama sequence classifier (one output per label) and the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=len(labels),
                      id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                      pad_token_id=tok.pad_token_id)
    return LlamaForSequenceClassification(cfg), tok


def _save(model, tok, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_safety_classifier(path: str | Path) -> Path:
    """A tiny Llama sequence classifier (labels safe/unsafe) with a rule that can be computed by hand:
    no transformer layers, so its verdict depends on the last token only — `unsafe` when that token's
    id is odd. A stand-in for MD-Judge in tests and offline benchmarks."""
    import torch

    model, tok = _tiny_classifier(("safe", "unsafe"), hidden=8, layers=0)
    odd = torch.arange(len(tok)) % 2 == 1
    with torch.no_grad():
        emb = torch.zeros(len(tok), 8)
        emb[odd, 0] = 1.0  # odd ids → feature 0
        emb[~odd, 1] = 1.0  # even ids → feature 1
        model.model.embed_tokens.weight.copy_(emb)
        model.score.weight.zero_()
        model.score.weight[0, 1] = 1.0  # safe ← feature 1
        model.score.weight[1, 0] = 1.0  # unsafe ← feature 0
    return _save(model, tok, path)


def make_scripted_lm(path: str | Path, reply: list[str]) -> Path:
    """A tiny causal LM that answers every prompt with `reply` (a list of pieces, "\\n" for a line
    break) and then its EOS, through the ordinary tokenizer → generate → decode path. A stand-in for a
    generative judge (MD-Judge) whose reply a test must know.

    How: no transformer layers, so the next token depends on the last token only; one-hot embeddings
    (RMSNorm keeps them one-hot) and an untied LM head that is a transition table: from any token to
    the reply's first piece, from each piece to the next, from the last to EOS. Pieces other than
    "\\n" become added tokens of the tiny BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    tok.add_tokens([p for p in dict.fromkeys(reply) if p != "\n"])
    ids = [tok.convert_tokens_to_ids("Ċ" if p == "\n" else p) for p in reply]
    if len(set(ids)) != len(ids):
        raise ValueError(f"reply pieces must differ (one transition per token): {reply}")
    vocab = len(tok)
    hidden = vocab + vocab % 2
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=8, num_hidden_layers=0,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=8192,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    step = {i: ids[0] for i in range(vocab)}
    step.update({a: b for a, b in zip(ids, ids[1:] + [tok.eos_token_id])})
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)
        for src, dst in step.items():
            head[dst, src] = 1.0
        model.lm_head.weight.copy_(head)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def make_tiny_reward_model(path: str | Path, *, labels: tuple[str, ...] = ("reward",), layers: int = 1,
                           hidden: int = 32, seed: int = 0) -> Path:
    """A seeded, randomly initialised tiny Llama reward model (sequence classifier, one output per
    label, e.g. the three dimensions) with the tiny tokenizer and its chat template. Its scores are
    arbitrary but deterministic: tests compute them themselves and check what was selected."""
    import torch

    torch.manual_seed(seed)
    model, tok = _tiny_classifier(labels, hidden=hidden, layers=layers)
    with torch.no_grad():  # HF's 0.02-std init gives scores ~1e-2 apart; spread them so ties are unlikely
        model.score.weight.normal_(0.0, 1.0)
    return _save(model, tok, path)


HOLD_STEP = 2


def __getattr__(name: str):
    # HoldAtCheckpoint subclasses transformers' TrainerCallback: built on first use so that importing
    # the builders above does not import transformers.
    if name == "HoldAtCheckpoint":
        global HoldAtCheckpoint
        HoldAtCheckpoint = _hold_at_checkpoint()
        return HoldAtCheckpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _hold_at_checkpoint():
    import os
    import time

    from transformers import TrainerCallback

    class HoldAtCheckpoint(TrainerCallback):
        """Kill-and-resume tests: once the step-2 checkpoint is saved, rank 0 writes its process
        group id to the file $HOLD_MARKER and every rank stops still, so the test's kill of that
        group lands mid-training with a checkpoint on disk. Name it to `train` as
        'h3ops.testing:HoldAtCheckpoint' (built in every rank)."""

        def on_save(self, args, state, control, **kw):
            if state.global_step == HOLD_STEP:
                if state.is_world_process_zero:
                    Path(os.environ["HOLD_MARKER"]).write_text(str(os.getpgid(0)))
                while True:
                    time.sleep(1)

    return HoldAtCheckpoint
