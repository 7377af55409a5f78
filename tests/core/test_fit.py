"""core.fit: the memory estimate of one replica and the GPU table of #11.

The Llama-3.1-8B-Instruct config.json is the public one (tests/core/data); the tiny model's is the
one serve_apps.tiny_model writes. GPU sizes come from the catalog seed, as at deploy time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from core.catalog import load_catalog
from core.fit import GB, EngineShape, FitError, check_gpus, count_params, estimate, refusal_message
from serve_apps.tiny_model import TinyModelSpec

LLAMA_8B = json.loads((Path(__file__).parent / "data" / "llama-3.1-8b-instruct.config.json")
                      .read_text())
TINY = {**asdict(TinyModelSpec()), "model_type": "llama", "tie_word_embeddings": False,
        "dtype": "float32"}


def catalog_gpus() -> dict[str, float]:
    out: dict[str, float] = {}
    for offer in load_catalog().offers():
        if offer.gpu_model and offer.gpu_vram_gb:
            out[offer.gpu_model] = max(out.get(offer.gpu_model, 0.0), offer.gpu_vram_gb)
    return out


@pytest.mark.parametrize(("config", "gpu", "max_model_len", "dtype", "fits"), [
    (TINY, "L4", 512, "auto", True),
    (LLAMA_8B, "L4", 131072, "bfloat16", False),
    (LLAMA_8B, "L4", 8192, "bfloat16", True),
    (LLAMA_8B, "L40S", 131072, "bfloat16", True),
    (LLAMA_8B, "P100", 8192, "bfloat16", False),
])
def test_fit_table(config: dict[str, object], gpu: str, max_model_len: int, dtype: str,
                   fits: bool) -> None:
    est = estimate(config, EngineShape(max_model_len=max_model_len, dtype=dtype))
    report = check_gpus(est, [gpu], catalog_gpus())
    assert report.gpus[0].fits is fits, report.gpus[0].reason()
    assert (est.gpu_memory_gb <= catalog_gpus()[gpu]) is fits


def test_llama_8b_numbers() -> None:
    assert count_params(LLAMA_8B) == pytest.approx(8.03e9, rel=0.005)
    short = estimate(LLAMA_8B, EngineShape(max_model_len=8192, dtype="bfloat16"))
    long = estimate(LLAMA_8B, EngineShape(max_model_len=131072, dtype="bfloat16"))
    assert short.weights_bytes / GB == pytest.approx(16.06, abs=0.05)
    # 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token, one full sequence.
    assert short.kv_bytes_per_token == 131072
    assert long.kv_cache_bytes == 131072 * 131072
    assert long.need_bytes - short.need_bytes == 131072 * (131072 - 8192)
    # max_num_seqs reserves no KV cache; it only sizes the logits margin.
    many = estimate(LLAMA_8B, EngineShape(max_model_len=8192, dtype="bfloat16", max_num_seqs=1))
    assert many.kv_cache_bytes == short.kv_cache_bytes
    assert many.overhead_bytes < short.overhead_bytes


def test_dtype_quantization_tensor_parallel_and_kv_dtype() -> None:
    base = EngineShape(max_model_len=8192)
    auto = estimate(LLAMA_8B, base)
    assert auto.dtype == "bfloat16" and auto.weight_bytes_per_param == 2.0
    f32 = estimate(LLAMA_8B, EngineShape(max_model_len=8192, dtype="float32"))
    assert f32.weights_bytes == 2 * auto.weights_bytes
    tiny_auto = estimate(TINY, EngineShape(max_model_len=512))
    assert tiny_auto.dtype == "float16"  # float32 checkpoints are served in float16
    awq = {**LLAMA_8B, "quantization_config": {"quant_method": "awq", "bits": 4}}
    q = estimate(awq, base)
    assert 5 * GB < q.weights_bytes < 6 * GB  # 4-bit layers, bf16 embeddings and head
    fp8_kv = estimate(LLAMA_8B, EngineShape(max_model_len=8192, kv_cache_dtype="fp8"))
    assert fp8_kv.kv_cache_bytes * 2 == auto.kv_cache_bytes
    tp2 = estimate(LLAMA_8B, EngineShape(max_model_len=131072, tensor_parallel_size=2))
    assert tp2.weights_bytes == auto.weights_bytes // 2
    assert tp2.kv_bytes_per_token == auto.kv_bytes_per_token // 2
    # Split over two L4s, the 128k context fits each (8 GB weights + 8.6 GB KV per GPU).
    assert check_gpus(tp2, ["L4"], catalog_gpus()).gpus[0].fits is True
    low = estimate(LLAMA_8B, EngineShape(max_model_len=8192, gpu_memory_utilization=0.5))
    assert low.gpu_memory_gb > 30


def test_moe_counts_every_expert() -> None:
    # Mixtral-8x7B's public config: ~46.7B parameters.
    mixtral = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
               "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False,
               "torch_dtype": "bfloat16"}
    assert count_params(mixtral) == pytest.approx(46.7e9, rel=0.01)
    # Qwen1.5-MoE-A2.7B: 60 experts of 1408 + a shared expert of 5632, ~14.3B parameters.
    qwen_moe = {"hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
                "shared_expert_intermediate_size": 5632, "num_experts": 60,
                "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                "vocab_size": 151936, "tie_word_embeddings": False}
    assert count_params(qwen_moe) == pytest.approx(14.3e9, rel=0.02)
    # Qwen2.5-0.5B: tied embeddings, ~0.49B.
    qwen = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "tie_word_embeddings": True}
    assert count_params(qwen) == pytest.approx(0.494e9, rel=0.01)
    # A given parameter count (the Hub's safetensors total) wins over the computed one.
    assert estimate(qwen, EngineShape(max_model_len=1024), params=10**9).params == 10**9


def test_refusal_names_each_candidate_with_numbers() -> None:
    est = estimate(LLAMA_8B, EngineShape(max_model_len=131072, dtype="bfloat16"))
    report = check_gpus(est, ["L4", "P100", "B200"], catalog_gpus())
    assert report.fitting == []
    msg = refusal_message("chat-8b", report)
    assert "L4: does not fit (needs 35." in msg and "24 GB GPU offers 21.6 GB usable" in msg
    assert "P100: does not fit" in msg and "B200: not in the catalog" in msg
    assert "KV cache 17.2 GB" in msg


def test_bad_config_names_the_field() -> None:
    with pytest.raises(FitError, match="num_hidden_layers"):
        estimate({**LLAMA_8B, "num_hidden_layers": "many"}, EngineShape(max_model_len=8))
    with pytest.raises(FitError, match="hidden_size"):
        count_params({})
