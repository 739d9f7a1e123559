"""mergekit's vocabulary building: `tokenizer_source` (base, union, a model) and the `tokenizer:` section.

    tokenizer:
      source: union            # base | union (mergekit's default here) | a model
      pad_to_multiple_of: 64   # the embeddings get mean rows up to a multiple of this
      tokens:
        <|im_start|>:
          source: ./chat_model # that model's row for this token ...
          force: true          # ... in every model, even those that have the token
        <|tool|>:
          source: {kind: model_token, model: ./base, token: "<|im_end|>"}   # or token_id: 5
        <|pad|>:
          source: {kind: zero}

As mergekit 0.1.5 defines it: the output vocabulary is the source's tokenizer (union: the base's,
plus every token of the other models it lacks, appended), plus the configured tokens. Each
model's embedding rows (embed_tokens, lm_head) are then re-indexed to it before the merge sees
them; a model lacking a token gets the token's default row: the configured source's row; else,
when only one model has the token, that model's; else the base's when the base has it; else the
mean over the models that have it (no model: zeros). `force` gives every model the default.

Where mergekit 0.1.5 is not deterministic or fails, h3ops picks the evident meaning and says so:
the union appends new tokens in model order (base first, then the config's order) and by id within
a model (mergekit: hash order, varying from run to run); without base_model the first model is the
base (mergekit: an arbitrary one); a token listed without a source that some model lacks gets the
automatic default (mergekit 0.1.5 stops with NotImplementedError); `source: base` with a listed
token the base lacks gets it like any other (mergekit 0.1.5 adds it to the base's own tokenizer
object, then fails with a KeyError). Checked against mergekit 0.1.5: bench/mergekit_agreement.py.
Not yet: a tokenizer with ids beyond its model's vocab_size (mergekit strips them): refused by name.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from merging.method import MergeConfigError

log = logging.getLogger(__name__)

SECTION_KEYS = {"source", "tokens", "pad_to_multiple_of"}
# The tensors indexed by token id along their first axis (mergekit's `vocabulary_axis: 0` weights).
EMBEDDING = re.compile(r"(^|\.)(embed_tokens|tok_embeddings|wte|embed_in|embed_out|word_embeddings|vocab_projector|"
                       r"output_layer|lm_head(\.linear|\.decoder)?)\.(weight|bias)$|^output\.weight$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


@dataclass(frozen=True)
class TokenSource:
    """Where one configured token's default row comes from."""
    kind: str  # "auto" (none given), "model", "model_token" or "zero"
    model: Path | None = None
    ref: str | None = None  # the model as written
    token_id: int | None = None
    token: str | None = None
    force: bool = False


@dataclass(frozen=True)
class VocabSpec:
    source: str | Path  # "base", "union" or a model folder
    tokens: dict[str, TokenSource] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


def parse(data: dict, resolve_model: Callable[[Any], Path]) -> VocabSpec | None:
    """`tokenizer_source` / `tokenizer:` of a config → a VocabSpec (None: the tokenizer is copied as is)."""
    if data.get("tokenizer_source") is not None and data.get("tokenizer") is not None:
        raise MergeConfigError("give either tokenizer_source or a tokenizer: section, not both (mergekit refuses both)")
    if data.get("tokenizer") is None:
        src = data.get("tokenizer_source")
        return None if src is None else VocabSpec(_source(src, "tokenizer_source", resolve_model))
    section = data["tokenizer"]
    if not isinstance(section, dict):
        raise MergeConfigError(f"tokenizer: must be a mapping with keys {sorted(SECTION_KEYS)}, got {section!r}")
    bad = sorted(set(section) - SECTION_KEYS)
    if bad:
        raise MergeConfigError(f"tokenizer: unknown key(s) {bad}; known: {sorted(SECTION_KEYS)}")
    pad = section.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise MergeConfigError(f"tokenizer.pad_to_multiple_of must be a positive integer, got {pad!r}")
    tokens = section.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise MergeConfigError(f"tokenizer.tokens must map each token to its settings, got {tokens!r}")
    parsed = {}
    for tok, setting in tokens.items():
        where = f"tokenizer.tokens[{tok!r}]"
        if not isinstance(tok, str) or not tok:
            raise MergeConfigError(f"{where}: a token must be a non-empty string")
        parsed[tok] = _token(setting, where, resolve_model)
    return VocabSpec(_source(section.get("source", "union"), "tokenizer.source", resolve_model), parsed, pad)


def _source(value: Any, where: str, resolve_model: Callable[[Any], Path]) -> str | Path:
    if value in ("base", "union"):
        return value
    try:
        return resolve_model(value)
    except MergeConfigError as e:
        raise MergeConfigError(f"{where}: base, union or a model; {e}") from None


def _token(setting: Any, where: str, resolve_model: Callable[[Any], Path]) -> TokenSource:
    if not isinstance(setting, dict) or set(setting) - {"source", "force"}:
        raise MergeConfigError(f"{where}: a mapping with keys source and force, got {setting!r}")
    force = setting.get("force", False)
    if not isinstance(force, bool):
        raise MergeConfigError(f"{where}.force must be true or false, got {force!r}")
    src = setting.get("source")
    if src is None:
        return TokenSource("auto", force=force)
    if isinstance(src, str):
        return TokenSource("model", resolve_model(src), src, force=force)
    if not isinstance(src, dict) or src.get("kind") not in ("zero", "model_token"):
        raise MergeConfigError(f"{where}.source: a model, {{kind: zero}} or {{kind: model_token, model: ..., "
                               f"token: ... | token_id: ...}}, got {src!r}")
    if src["kind"] == "zero":
        if set(src) != {"kind"}:
            raise MergeConfigError(f"{where}.source: kind zero takes no other key, got {sorted(src)}")
        return TokenSource("zero", force=force)
    bad = sorted(set(src) - {"kind", "model", "token", "token_id"})
    if bad or "model" not in src or ("token" in src) == ("token_id" in src):
        raise MergeConfigError(f"{where}.source: kind model_token takes model and exactly one of token or token_id"
                               + (f"; unknown key(s) {bad}" if bad else ""))
    tid, tok = src.get("token_id"), src.get("token")
    if tid is not None and (not isinstance(tid, int) or isinstance(tid, bool) or tid < 0):
        raise MergeConfigError(f"{where}.source.token_id must be a non-negative integer, got {tid!r}")
    if tok is not None and not isinstance(tok, str):
        raise MergeConfigError(f"{where}.source.token must be a string, got {tok!r}")
    return TokenSource("model_token", resolve_model(src["model"]), str(src["model"]), tid, tok, force)


@dataclass
class Vocab:
    """The merged vocabulary and, per input model, where each of its tokens' rows comes from."""
    tokenizer: Any  # a transformers tokenizer to save, or None when `files_from` is copied as is
    files_from: Path | None
    n_tokens: int
    size: int  # output embedding rows: n_tokens padded to pad_to_multiple_of
    perm: dict[Path, torch.Tensor]  # model folder → its old row of each new id (-1: lacks the token)
    base: Path | None
    overrides: dict[int, TokenSource]  # new id → the configured source
    source_rows: dict[int, tuple[Path, int]]  # new id → (model, old row) for model / model_token sources
    identity: bool  # every model keeps its rows as they are: nothing to re-index

    def reindex(self, name: str, paths: list[Path], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One embedding tensor of every input (float32, in input order) on the merged vocabulary."""
        models = list(dict.fromkeys(paths))
        # Rows (token ids) × everything else, flattened: embeddings, lm_head weights and biases alike.
        first = {p: tensors[paths.index(p)] for p in models}
        token_shape = first[models[0]].shape[1:]
        for p, t in first.items():
            if t.shape[1:] != token_shape:
                raise MergeConfigError(f"{name}: shapes {list(t.shape)} in {p} and {[-1, *token_shape]} elsewhere; a "
                                       "merged vocabulary needs the same non-vocabulary dimensions in every model")
        first = {p: t.reshape(t.shape[0], -1) for p, t in first.items()}
        n, hidden = self.n_tokens, first[models[0]].shape[1]
        perms = torch.stack([self.perm[p] for p in models])
        present = perms >= 0
        rows = [first[p][perms[k].clamp(min=0)] for k, p in enumerate(models)]  # fresh copies, edited in place
        # The default row: the mean over the models that have the token (one model: its row exactly,
        # none: zeros), then the base's row wherever the base has the token. One n×h sum at a time.
        default = torch.zeros(n, hidden)
        for k, r in enumerate(rows):
            default.add_(torch.where(present[k, :, None], r, 0.0))
        default.div_(present.sum(0).clamp(min=1)[:, None].to(default.dtype))
        if self.base in first:
            b = models.index(self.base)
            default[present[b]] = rows[b][present[b]]
        keep = present.clone()
        for tid, src in self.overrides.items():
            if src.kind == "zero":
                default[tid] = 0.0
            elif src.kind in ("model", "model_token"):
                model, row = self.source_rows[tid]
                if model not in first:
                    raise MergeConfigError(f"{name}: token {src.token or tid} takes its row from {src.ref}, which "
                                           "is not among this tensor's inputs")
                default[tid] = first[model][row]
            if src.force:
                keep[:, tid] = False
        out = {}
        for k, p in enumerate(models):
            t = rows[k]
            t[~keep[k]] = default[~keep[k]]
            if self.size > n:  # mergekit pads with each model's mean row (vocabulary expansion)
                t = torch.cat([t, t.mean(0, keepdim=True).expand(self.size - n, hidden)])
            out[p] = t.reshape(t.shape[0], *token_shape)
        return [out[p] for p in paths]


def build_for(spec: VocabSpec, specs: list, base, readers: list) -> Vocab:
    """build() for a merge's inputs (ModelSpecs) and their open CheckpointReaders."""
    rows = {}
    for s, r in zip(specs, readers):
        found = [r.shape(n)[0] for n in r.names() if is_embedding(n, r.shape(n))]
        if not found:
            raise MergeConfigError(f"{s.ref}: no embedding tensor (embed_tokens, lm_head, ...) to re-index to a "
                                   "merged vocabulary")
        rows[s.path] = min(found)
    return build(spec, [s.path for s in specs], base.path if base is not None else None, rows)


def build(spec: VocabSpec, inputs: list[Path], base: Path | None, rows: dict[Path, int]) -> Vocab:
    """Load the inputs' tokenizers and build the merged vocabulary; every error is raised here,
    before anything is written. `rows`: each input's embedding rows (its stored vocabulary size)."""
    from transformers import AutoTokenizer

    inputs = list(dict.fromkeys(inputs))
    first = base or inputs[0]

    def load(folder: Path):
        try:
            return AutoTokenizer.from_pretrained(folder, use_fast=True)
        except Exception as e:  # noqa: BLE001 - any loader failure means the same thing here
            raise MergeConfigError(f"{folder}: its tokenizer cannot be loaded for vocabulary building ({e})") from None

    toks = {}
    for p in inputs:
        if p == first or any((p / f).is_file() for f in _TOKENIZER_FILES):
            toks[p] = load(p)
        else:
            log.warning("%s has no tokenizer: taken to share %s's, as mergekit does", p, first)
    vocabs = {p: t.get_vocab() for p, t in toks.items()}
    for p in inputs:
        limit = _config_vocab_size(p) or len(vocabs.get(p, vocabs[first]))
        beyond = sorted(tok for tok, i in vocabs.get(p, {}).items() if i >= limit)
        if beyond:
            raise MergeConfigError(f"{p}: tokenizer has {len(beyond)} token(s) with ids beyond the model's vocab_size "
                                   f"{limit} (e.g. {beyond[0]!r}); mergekit strips them, h3ops does not yet")
    if spec.source == "base":
        out = load(first)
    elif spec.source == "union":
        out = load(first)
        _add_union(out, [toks[p] for p in inputs if p in toks], first_vocab=vocabs[first])
    else:
        out = load(spec.source)
    for tok in spec.tokens:
        if tok not in out.get_vocab():  # a token it has stays as it is (not made an added token)
            out.add_tokens(tok)
    vocab = out.get_vocab()
    n = len(vocab)
    if sorted(vocab.values()) != list(range(n)):
        raise MergeConfigError(f"the merged vocabulary's ids are not 0..{n - 1}; its embeddings cannot be built")
    size = n if not spec.pad_to_multiple_of else -(-n // spec.pad_to_multiple_of) * spec.pad_to_multiple_of
    by_id = sorted(vocab, key=vocab.get)
    perm = {p: torch.tensor([vocabs.get(p, vocabs[first]).get(t, -1) for t in by_id], dtype=torch.long)
            for p in inputs}
    overrides, source_rows = {}, {}
    for tok, src in spec.tokens.items():
        tid = vocab[tok]
        overrides[tid] = src
        if src.kind in ("model", "model_token"):
            if src.model not in perm:
                raise MergeConfigError(f"tokenizer.tokens[{tok!r}]: model {src.ref} is not one of the merge's inputs")
            source_rows[tid] = (src.model, _source_row(tok, src, tid, perm, vocabs.get(src.model, vocabs[first]),
                                                       rows[src.model]))
    for p in inputs:
        if int(perm[p].max()) >= rows[p]:
            raise MergeConfigError(f"{p}: its tokenizer has ids up to {int(perm[p].max())} but its embeddings only "
                                   f"{rows[p]} rows")
    identity = not overrides and size == n and all(
        rows[p] == n and torch.equal(perm[p], torch.arange(n)) for p in inputs)
    # A source's tokenizer that gained nothing is copied as its files are; anything else is written
    # by transformers, as mergekit writes every tokenizer it builds.
    unchanged = spec.source != "union" and not spec.tokens
    files_from = None if not unchanged else (first if spec.source == "base" else spec.source)
    return Vocab(None if files_from else out, files_from, n, size, perm, base, overrides, source_rows, identity)


def _add_union(out, tokenizers: list, first_vocab: dict[str, int]) -> None:
    """Append to `out` (the base's tokenizer) every token of the others it lacks, as mergekit's union:
    plain tokens first, as added tokens, then the models' added (special) tokens with their settings."""
    added: dict[str, Any] = {}
    for t in tokenizers:
        for _, info in sorted(t.added_tokens_decoder.items()):
            added.setdefault(info.content, info)  # the first model's settings win, as in mergekit
    plain = {}
    for t in tokenizers:
        v = t.get_vocab()
        for tok in sorted(v, key=v.get):
            if tok not in first_vocab and tok not in added:
                plain.setdefault(tok, None)
    if plain:
        out.add_tokens(list(plain))
    for info in added.values():
        out.add_tokens(info)


def _source_row(tok: str, src: TokenSource, tid: int, perm: dict, vocab: dict[str, int], n_rows: int) -> int:
    where = f"tokenizer.tokens[{tok!r}]"
    if src.kind == "model":
        row = int(perm[src.model][tid])
        if row < 0:
            raise MergeConfigError(f"{where}: model {src.ref} has no token {tok!r} to take its row from")
        return row
    if src.token is not None:
        if src.token not in vocab:
            raise MergeConfigError(f"{where}: model {src.ref} has no token {src.token!r}")
        return vocab[src.token]
    if src.token_id >= n_rows:
        raise MergeConfigError(f"{where}: token_id {src.token_id} is out of range for {src.ref} ({n_rows} rows)")
    return src.token_id


def _config_vocab_size(folder: Path) -> int | None:
    conf = folder / "config.json"
    if not conf.is_file():
        return None
    data = json.loads(conf.read_text())
    size = data.get("vocab_size", (data.get("text_config") or {}).get("vocab_size"))
    return size if isinstance(size, int) else None


def is_embedding(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) >= 1 and EMBEDDING.search(name) is not None
