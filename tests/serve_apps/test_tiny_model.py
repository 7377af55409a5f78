"""The tiny model builds reproducibly and loads with the tokenizer and template we promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.serve_apps.conftest import require_modules

require_modules("torch", "transformers", "tokenizers", "safetensors")

from serve_apps.tiny_model import (  # noqa: E402
    EOS,
    build_key,
    build_tiny_model,
    cached_tiny_model,
    file_hashes,
    stdlib_sources,
)

pytestmark = pytest.mark.timeout(600)


def test_stdlib_sources_are_sorted_and_exclude_site_packages() -> None:
    paths = stdlib_sources()
    assert len(paths) > 500
    assert not any("site-packages" in p.parts for p in paths)
    assert paths == sorted(paths, key=lambda p: p.as_posix())
    assert all(p.suffix == ".py" for p in paths)


def test_build_is_byte_identical_and_loads(tmp_path: Path, tiny_model_dir: Path) -> None:
    fresh = build_tiny_model(tmp_path / "again")
    first, second = file_hashes(tiny_model_dir), file_hashes(fresh)
    assert first == second
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        set(first)

    config = json.loads((fresh / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["vocab_size"]) == (128, 2, 2, 2048)
    assert config["hidden_size"] // config["num_attention_heads"] == 64

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fresh)
    assert len(tok) == 2048 and tok.eos_token == EOS
    text = tok.apply_chat_template([{"role": "user", "content": "import os"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|user|>\nimport os<|end|>\n<|assistant|>\n"
    ids = tok("def main():\n    return 0\n")["input_ids"]
    assert tok.decode(ids) == "def main():\n    return 0\n"
    assert len(ids) < 12  # trained on Python: common code is a few tokens


def test_cache_is_keyed_and_reused(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert tiny_model_dir.name == f"tiny-llama-{build_key()}"
    # A second lookup in the same root does not rebuild (same directory, same mtime).
    mtime = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    assert cached_tiny_model(tiny_model_dir.parent) == tiny_model_dir
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert not list(tiny_model_dir.parent.glob(".build-*"))


def test_cli_builds_into_an_empty_directory(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.models import app

    runner = CliRunner()
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "x").write_text("x")
    refused = runner.invoke(app, ["build-tiny", str(target)])
    assert refused.exit_code == 1 and "not_empty" in refused.output
