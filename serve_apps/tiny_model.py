"""Build the tiny chat model offline, reproducibly: the laptop default and the CI model.

A 2-layer Llama (hidden 128, 2 heads, so head_dim 64: vLLM's CPU attention rejects head_dim 16)
with a byte-level BPE vocabulary of 2048 trained with ``tokenizers`` on the running interpreter's
CPython standard library sources, read in sorted order. Weights are random (``torch`` seeded with
0): the model talks nonsense, but through the real tokenizer, chat template and engine, which is
all serving needs. Nothing is downloaded.

The same interpreter and library versions give byte-identical files (tested). ``cached_tiny_model``
keys a build directory by a hash of everything the output depends on, so a test session (or
``make run``) builds it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BUILDER_VERSION = 1
SEED = 0
SPECIAL_TOKENS = ("<|bos|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>")
BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
# One turn per message, then the assistant header; `<|end|>` ends a turn and is the EOS token,
# so generation stops at the end of the assistant's turn. Content may be a string, OpenAI content
# parts (text only) or none (an assistant turn with tool calls). Tools, tool calls and tool
# results are rendered as JSON text, so tool-calling requests run through the real template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nTools:"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}<|end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "\n[{{ call['function']['name'] }}] "
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Files the build writes; their hashes identify a build.
OUTPUT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class TinyModelSpec:
    """The architecture; the defaults are the model every test and `make run` use."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    vocab_size: int = 2048
    max_position_embeddings: int = 2048


def stdlib_sources() -> list[Path]:
    """The interpreter's standard library ``.py`` files, sorted (third-party packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        parts = set(path.relative_to(root).parts)
        if parts & {"site-packages", "dist-packages", "__pycache__"}:
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _texts(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        yield path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(vocab_size: int, paths: list[Path] | None = None):  # noqa: ANN201
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``paths`` (default: the stdlib)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    paths = stdlib_sources() if paths is None else paths
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_texts(paths), trainer, length=len(paths))
    return tok


def build_tiny_model(out_dir: Path | str, spec: TinyModelSpec | None = None) -> Path:
    """Write the tiny model (config, tokenizer with chat template, safetensors) to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer(spec.vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=spec.max_position_embeddings,
    )
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=_token_id(fast, BOS), eos_token_id=_token_id(fast, EOS),
        pad_token_id=_token_id(fast, PAD), tie_word_embeddings=False, dtype="float32",
    )
    # The default initialisation, seeded: the same on every CPU.
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    _check_outputs(out)
    return out


def _token_id(tokenizer: Any, token: str) -> int:
    ids = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(ids, int):
        raise RuntimeError(f"{token} is not a single token")
    return ids


def _check_outputs(out: Path) -> None:
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json",
                                 "tokenizer_config.json") if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"tiny model build incomplete, missing {missing} in {out}")


def file_hashes(model_dir: Path | str) -> dict[str, str]:
    """SHA-256 of every file of a build (relative path -> hex), to compare builds."""
    root = Path(model_dir)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def build_key(spec: TinyModelSpec | None = None) -> str:
    """A hash of everything a build depends on: this builder, the spec, the interpreter's
    stdlib (version and location) and the versions of the libraries that write the files."""
    from importlib.metadata import version

    parts = {
        "builder": BUILDER_VERSION,
        "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "spec": asdict(spec or TinyModelSpec()),
        "python": sys.version,
        "stdlib": sysconfig.get_paths()["stdlib"],
        "libs": {name: version(name) for name in ("tokenizers", "transformers", "torch",
                                                  "safetensors")},
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_root() -> Path:
    """``$INVENTIV_MODEL_CACHE``, else ``$XDG_CACHE_HOME/inventiv/models``, else
    ``~/.cache/inventiv/models``."""
    if env := os.environ.get("INVENTIV_MODEL_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "inventiv" / "models"


def cached_tiny_model(cache_root: Path | str | None = None,
                      spec: TinyModelSpec | None = None) -> Path:
    """The tiny model's directory under ``cache_root``, built first if absent.

    The directory name carries ``build_key``, so a changed builder or library version builds
    anew. Builds go to a temporary sibling renamed into place (atomic), so concurrent sessions
    never see half a model.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / f"tiny-llama-{build_key(spec)}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        build_tiny_model(tmp, spec)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
            # Another process won the race with an identical build: use theirs.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
