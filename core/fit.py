"""Will a model fit a GPU? An estimate of one replica's GPU memory, from the model's
``config.json`` and the engine args, before any node is launched.

Per GPU of a replica (tensor parallelism splits weights and KV heads over ``tp`` GPUs):

- **weights**: parameters x bytes per parameter. The parameter count is the one given (e.g. the
  Hub's safetensors total) or computed from the config: embeddings (+ an untied LM head),
  attention (q, k, v, o with ``head_dim`` and grouped KV heads), the MLP (gated: 3 matrices;
  MoE: every expert, the shared expert and the router are resident), norms. Bytes: the engine's
  ``dtype`` (``auto``: the config's ``torch_dtype``, float32 served as float16 like vLLM does), or
  the quantization's bits for the linear layers (embeddings stay in the dtype).
- **KV cache**: vLLM refuses to start unless its cache holds at least one sequence of
  ``max_model_len`` tokens, so that is the floor counted: ``2 (K and V) x layers x kv_heads/tp x
  head_dim x bytes (kv_cache_dtype) x max_model_len``. More concurrent sequences only use what
  is left (``max_num_seqs`` bounds them, it reserves nothing). Sliding windows are ignored (an
  overestimate for such models).
- **overhead** (documented margin): 1 GiB fixed (CUDA context, cuBLAS workspace, CUDA graphs)
  + the activations of one profiling step of ``max_num_batched_tokens`` tokens (default 8192):
  ``tokens x (4 x hidden + 2 x intermediate) x dtype bytes``, + the fp32 logits of
  ``max_num_seqs`` (default 256) sequences.

vLLM may use ``gpu_memory_utilization`` (default 0.9) of a GPU, so a GPU fits when
``need <= utilization x its memory``; :attr:`FitEstimate.gpu_memory_gb` is the GPU size that
takes (``need / utilization``), what ``placement.model_memory_gb`` holds. GB are 10^9 bytes, as
the catalog's GPU sizes are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

GB = 1e9
FIXED_OVERHEAD_BYTES = 1 << 30
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192

DTYPE_BYTES = {"float32": 4.0, "float": 4.0, "float16": 2.0, "half": 2.0, "bfloat16": 2.0,
               "fp8": 1.0, "float8_e4m3fn": 1.0, "float8_e5m2": 1.0}
KV_CACHE_DTYPE_BYTES = {"fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "fp8_inc": 1.0,
                        "float16": 2.0, "bfloat16": 2.0, "half": 2.0, "float32": 4.0}
# Quantization methods that do not name their bits: their weight bytes per parameter.
QUANT_METHOD_BYTES = {"fp8": 1.0, "fbgemm_fp8": 1.0, "modelopt": 1.0, "mxfp4": 0.5,
                      "bitsandbytes": 0.5}
# Scales and zero points of group-quantized weights (e.g. one fp16 per 128 4-bit weights).
QUANT_OVERHEAD = 1.05


class FitError(ValueError):
    """The config lacks what the estimate needs (``field`` names it)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"config.json {field_name}: {message}")


@dataclass(frozen=True)
class EngineShape:
    """The engine args the estimate reads (``core.spec.EngineSpec`` plus ``extra_args``)."""

    max_model_len: int
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    max_num_batched_tokens: int | None = None

    @classmethod
    def of(cls, engine: Any) -> EngineShape:
        """From a ``core.spec.EngineSpec``."""
        extra = dict(getattr(engine, "extra_args", None) or {})
        kv = extra.get("kv_cache_dtype")
        batched = extra.get("max_num_batched_tokens")
        return cls(max_model_len=int(engine.max_model_len), dtype=str(engine.dtype),
                   tensor_parallel_size=int(engine.tensor_parallel_size),
                   max_num_seqs=engine.max_num_seqs,
                   gpu_memory_utilization=engine.gpu_memory_utilization,
                   kv_cache_dtype=str(kv) if isinstance(kv, str) else None,
                   max_num_batched_tokens=int(batched) if isinstance(batched, int) else None)


@dataclass(frozen=True)
class FitEstimate:
    """One replica's memory per GPU, in bytes, and how it was reached."""

    params: int
    weight_bytes_per_param: float
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    kv_bytes_per_token: int
    dtype: str

    @property
    def need_bytes(self) -> int:
        """What vLLM must find on each GPU."""
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def gpu_memory_gb(self) -> float:
        """The GPU size (GB) that holds it at ``gpu_memory_utilization``, rounded up to 0.1."""
        return math.ceil(self.need_bytes / self.gpu_memory_utilization / GB * 10) / 10

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "dtype": self.dtype,
                "weights_gb": round(self.weights_bytes / GB, 2),
                "kv_cache_gb": round(self.kv_cache_bytes / GB, 2),
                "overhead_gb": round(self.overhead_bytes / GB, 2),
                "need_gb": round(self.need_bytes / GB, 2),
                "gpu_memory_gb": self.gpu_memory_gb,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "tensor_parallel_size": self.tensor_parallel_size}


@dataclass(frozen=True)
class GpuFit:
    """One candidate GPU type: its memory and whether the replica fits it."""

    gpu: str
    gpu_memory_gb: float | None  # None: not in the catalog
    usable_gb: float | None
    need_gb: float
    fits: bool

    def reason(self) -> str:
        if self.gpu_memory_gb is None:
            return f"{self.gpu}: not in the catalog"
        verdict = "fits" if self.fits else "does not fit"
        return (f"{self.gpu}: {verdict} (needs {self.need_gb:.1f} GB, {self.gpu_memory_gb:g} GB "
                f"GPU offers {self.usable_gb:.1f} GB usable)")


@dataclass(frozen=True)
class FitReport:
    estimate: FitEstimate
    gpus: list[GpuFit] = field(default_factory=list)

    @property
    def fitting(self) -> list[str]:
        return [g.gpu for g in self.gpus if g.fits]


def _int(cfg: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = cfg.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        if default is not None and value is None:
            return default
        raise FitError(name, "missing or not a positive integer")
    return value


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal configs nest it in ``text_config``)."""
    inner = config.get("text_config")
    if isinstance(inner, Mapping):
        return {**{k: v for k, v in config.items() if k != "text_config"}, **inner}
    return config


class _Dims(NamedTuple):
    """A decoder's sizes, as both the parameter count and the memory estimate read them."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def _dims(cfg: Mapping[str, Any]) -> _Dims:
    """The sizes of a text config (grouped KV heads and ``head_dim`` default as in HF)."""
    hidden = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_hidden_layers")
    heads = _int(cfg, "num_attention_heads")
    return _Dims(hidden, layers, heads, _int(cfg, "num_key_value_heads", heads),
                 _int(cfg, "head_dim", hidden // heads), _int(cfg, "vocab_size"))


def _experts(cfg: Mapping[str, Any]) -> int:
    for name in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = cfg.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return 0


def count_params(config: Mapping[str, Any]) -> int:
    """Parameters of a decoder-only transformer (Llama, Mistral, Qwen2/3, Mixtral, Qwen-MoE)."""
    cfg = text_config(config)
    hidden, layers, heads, kv_heads, head_dim, vocab = _dims(cfg)
    embed = vocab * hidden
    lm_head = 0 if cfg.get("tie_word_embeddings", False) else vocab * hidden
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    experts = _experts(cfg)
    if experts:
        expert_inter = _int(cfg, "moe_intermediate_size", cfg.get("intermediate_size"))
        mlp = experts * 3 * hidden * expert_inter + hidden * experts  # experts + router
        shared = cfg.get("shared_expert_intermediate_size")
        n_shared = cfg.get("n_shared_experts")
        if isinstance(shared, int) and shared > 0:
            mlp += 3 * hidden * shared + hidden
        elif isinstance(n_shared, int) and n_shared > 0:
            mlp += n_shared * 3 * hidden * expert_inter
    else:
        mlp = 3 * hidden * _int(cfg, "intermediate_size")
    norms = 2 * hidden
    return embed + lm_head + layers * (attn + mlp + norms) + hidden


def _dtype_bytes(engine_dtype: str, config: Mapping[str, Any]) -> tuple[str, float]:
    if engine_dtype != "auto":
        return engine_dtype, DTYPE_BYTES.get(engine_dtype, 2.0)
    torch_dtype = str(text_config(config).get("torch_dtype") or config.get("dtype")
                      or "bfloat16")
    if DTYPE_BYTES.get(torch_dtype, 2.0) >= 4:
        return "float16", 2.0  # vLLM serves float32 checkpoints in float16 under "auto"
    return torch_dtype, DTYPE_BYTES.get(torch_dtype, 2.0)


def quant_bytes(config: Mapping[str, Any]) -> float | None:
    """Bytes per linear-layer parameter of a quantized checkpoint (None: not quantized)."""
    q = config.get("quantization_config")
    if not isinstance(q, Mapping):
        return None
    for name in ("bits", "w_bit", "weight_bits", "num_bits"):
        bits = q.get(name)
        if isinstance(bits, int) and 0 < bits <= 16:
            return bits / 8 * QUANT_OVERHEAD
    groups = q.get("config_groups")
    if isinstance(groups, Mapping):
        for group in groups.values():
            bits = ((group or {}).get("weights") or {}).get("num_bits") \
                if isinstance(group, Mapping) else None
            if isinstance(bits, int) and 0 < bits <= 16:
                return bits / 8 * QUANT_OVERHEAD
    if q.get("load_in_4bit"):
        return 0.5 * QUANT_OVERHEAD
    if q.get("load_in_8bit"):
        return 1.0
    method = str(q.get("quant_method") or "").lower()
    return QUANT_METHOD_BYTES.get(method)


def estimate(config: Mapping[str, Any], engine: EngineShape,
             params: int | None = None) -> FitEstimate:
    """Memory one replica needs per GPU (see the module docstring). ``params``: a known
    parameter count (else computed from ``config``). Raises :class:`FitError`."""
    cfg = text_config(config)
    hidden, layers, _, kv_heads, head_dim, vocab = _dims(cfg)
    inter = _int(cfg, "moe_intermediate_size", cfg.get("intermediate_size") or 4 * hidden) \
        if _experts(cfg) else _int(cfg, "intermediate_size", 4 * hidden)
    tp = max(1, engine.tensor_parallel_size)
    dtype, dbytes = _dtype_bytes(engine.dtype, config)
    n = params if params is not None else count_params(config)
    q = quant_bytes(config)
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    if q is None:
        per_param = dbytes
        weights = n * dbytes
    else:
        linear = max(0, n - embeddings)
        weights = linear * q + embeddings * dbytes
        per_param = weights / n if n else q
    if engine.kv_cache_dtype and engine.kv_cache_dtype != "auto":
        kv_bytes = KV_CACHE_DTYPE_BYTES.get(engine.kv_cache_dtype, dbytes)
    else:
        kv_bytes = dbytes
    kv_heads_per_gpu = math.ceil(kv_heads / tp)  # fewer KV heads than GPUs: replicated
    per_token = int(2 * layers * kv_heads_per_gpu * head_dim * kv_bytes)
    kv_cache = per_token * engine.max_model_len
    seqs = engine.max_num_seqs or DEFAULT_MAX_NUM_SEQS
    batched = engine.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS
    activations = int(batched * (4 * hidden + 2 * inter / tp) * dbytes)
    logits = int(seqs * vocab * 4 / tp)
    util = engine.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    return FitEstimate(params=n, weight_bytes_per_param=per_param,
                       weights_bytes=int(weights / tp), kv_cache_bytes=kv_cache,
                       overhead_bytes=FIXED_OVERHEAD_BYTES + activations + logits,
                       tensor_parallel_size=tp, gpu_memory_utilization=util,
                       kv_bytes_per_token=per_token, dtype=dtype)


def check_gpus(est: FitEstimate, candidates: Sequence[str],
               gpu_memory_gb: Mapping[str, float]) -> FitReport:
    """Whether ``est`` fits each candidate GPU type (``gpu_memory_gb``: per GPU, from the
    catalog; a candidate missing there does not fit)."""
    need = est.need_bytes / GB
    out = []
    for gpu in dict.fromkeys(candidates):
        mem = gpu_memory_gb.get(gpu)
        if mem is None:
            out.append(GpuFit(gpu, None, None, need, False))
            continue
        usable = mem * est.gpu_memory_utilization
        out.append(GpuFit(gpu, float(mem), usable, need, est.need_bytes <= usable * GB))
    return FitReport(est, out)


def refusal_message(name: str, report: FitReport) -> str:
    """Why no candidate fits, with the numbers."""
    e = report.estimate
    return (f"deployment {name!r}: no candidate GPU fits: needs {e.need_bytes / GB:.1f} GB per "
            f"GPU (weights {e.weights_bytes / GB:.1f} GB + KV cache {e.kv_cache_bytes / GB:.1f} "
            f"GB + overhead {e.overhead_bytes / GB:.1f} GB, {e.dtype}, tensor_parallel_size "
            f"{e.tensor_parallel_size}) at gpu_memory_utilization {e.gpu_memory_utilization:g}; "
            + "; ".join(g.reason() for g in report.gpus))
