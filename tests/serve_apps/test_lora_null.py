"""LoRA adapters with the null engine, offline: a tiny PEFT adapter for the tiny model built by
hand (deterministic weights, like the model itself), and the null engine's ``resolve_lora``
(what Ray Serve LLM's multiplexing calls after downloading an adapter) accepting it, refusing a
folder that is no adapter, and answering an unknown ``<model>:<adapter>`` with vLLM's 404.

The live test (ingress + Serve multiplexing from a moto S3 bucket on the shared cluster) is
tests/serve_apps/test_lora_live.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.serve_apps.conftest import require_modules

RANK = 4
TARGETS = ("q_proj", "v_proj")


# ------------------------------------------------------------------ the adapter, offline


def build_tiny_adapter(folder: Path, base_model: str, hidden: int = 128, layers: int = 2,
                       seed: int = 0) -> Path:
    """A PEFT LoRA adapter (rank 4 on q_proj/v_proj) for the tiny Llama: ``adapter_config.json``
    and ``adapter_model.safetensors`` written by hand, deterministic (same bytes every build)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for proj in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, hidden, generator=gen) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(hidden, RANK, generator=gen) * 0.01
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": RANK, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(TARGETS), "fan_in_fan_out": False, "inference_mode": True,
    }, sort_keys=True, indent=2))
    return folder


def test_the_adapter_build_is_deterministic(tmp_path: Path) -> None:
    require_modules("torch", "safetensors")
    a = build_tiny_adapter(tmp_path / "a", "tiny")
    b = build_tiny_adapter(tmp_path / "b", "tiny")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_the_null_engine_resolves_adapters_and_refuses_what_is_none(tmp_path: Path) -> None:
    require_modules("vllm", "torch", "safetensors")
    from serve_apps.null_engine import NullEngine

    engine = NullEngine(SimpleNamespace(engine_kwargs={"max_model_len": 512}), tokenizer=None)
    good = build_tiny_adapter(tmp_path / "sql", "tiny")
    disk = SimpleNamespace(model_id="tiny:sql", local_path=str(good))
    asyncio.run(engine.resolve_lora(disk))
    asyncio.run(engine.resolve_lora(disk))  # idempotent
    assert engine.adapters == {"tiny:sql": str(good)}
    assert engine._unknown_adapter("tiny:sql") is None
    assert engine._unknown_adapter("tiny") is None
    missing = engine._unknown_adapter("tiny:nope")
    assert missing is not None and missing.error.code == 404

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="adapter_config.json"):
        asyncio.run(engine.resolve_lora(SimpleNamespace(model_id="tiny:e", local_path=empty)))
    (empty / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["q"]}))
    with pytest.raises(ValueError, match="not a PEFT"):  # no weights
        asyncio.run(engine.resolve_lora(SimpleNamespace(model_id="tiny:e", local_path=empty)))
    assert "tiny:e" not in engine.adapters
