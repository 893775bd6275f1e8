"""The built-in model: reproducible bytes, a manifest that catches damage, a usable tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gpuinfer.models import builtin, tinymodel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One freshly written built-in model."""
    return tinymodel.write_model(tmp_path_factory.mktemp("model"))


def test_written_twice_is_byte_identical(model_dir: Path, tmp_path: Path) -> None:
    again = tinymodel.write_model(tmp_path / "again")
    assert tinymodel.file_digests(model_dir) == tinymodel.file_digests(again)
    assert (model_dir / tinymodel.MANIFEST_NAME).read_bytes() == (
        again / tinymodel.MANIFEST_NAME
    ).read_bytes()


def test_a_different_seed_gives_different_weights(model_dir: Path, tmp_path: Path) -> None:
    other = tinymodel.write_model(tmp_path / "other", tinymodel.TinyModelSpec(seed=99))
    ours, theirs = tinymodel.file_digests(model_dir), tinymodel.file_digests(other)
    assert ours["model.safetensors"] != theirs["model.safetensors"]
    assert ours["tokenizer.json"] == theirs["tokenizer.json"]


def test_config_is_a_cpu_loadable_llama(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] == 64, "vLLM's CPU attention rejects head_dim 16"
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"]
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"])


def test_manifest_catches_a_damaged_file(model_dir: Path, tmp_path: Path) -> None:
    copy = tinymodel.write_model(tmp_path / "copy")
    assert tinymodel.verify_model(copy) == []
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (copy / "extra.bin").write_bytes(b"x")
    (copy / "generation_config.json").unlink()
    problems = tinymodel.verify_model(copy)
    assert any(p.startswith("model.safetensors: sha256") for p in problems), problems
    assert "extra.bin: present but not in the manifest" in problems
    assert "generation_config.json: in the manifest but missing from the model" in problems


def test_ensure_model_caches_and_repairs(tmp_path: Path) -> None:
    first = tinymodel.ensure_model(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tinymodel.ensure_model(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp, "cached copy rewritten"
    (first / "config.json").write_text("{}")
    repaired = tinymodel.ensure_model(tmp_path)
    assert tinymodel.verify_model(repaired) == []


def test_tokenizer_round_trips_hard_text(model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    for text in ["", "plain words", "café 東京 🙂🚀 e\u0301", "a" + " " * 50 + "b\n\n\tc"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("hi")[0] == tokenizer.bos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|begin_of_text|><|user|>\nHello\n<|assistant|>\n"


def test_cli_writes_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert builtin.main(["--out", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert builtin.main(["--verify", str(tmp_path / "m")]) == 0
    (tmp_path / "m" / "config.json").write_text("{}")
    assert builtin.main(["--verify", str(tmp_path / "m")]) == 1
    assert "config.json: sha256" in capsys.readouterr().out


PINNED_FORMAT_VERSION = 2
PINNED_DIGESTS = {
    "config.json": "205cda766dcd3f10b893c377cc30560bad50401571828e5de2fc8134bbcb4976",
    "model.safetensors": "7341915fa8533f8d0a3869f50e26dfae6d8381d49013bd754f774ad8221cce4c",
    "tokenizer.json": "2915491a31922bcc7110b978072fdb0a457cbd24702f37373ed44a44f8c51240",
    "tokenizer_config.json": "8317d54a01011d771acaa09a0874024d742b2c722ccea0e491618e2485608df8",
}


def test_bytes_are_pinned_for_this_format_version(model_dir: Path) -> None:
    """Same bytes on every machine; a change to them must come with a format_version bump."""
    assert tinymodel.DEFAULT_SPEC.format_version == PINNED_FORMAT_VERSION, (
        "format_version changed: update PINNED_DIGESTS from a fresh write"
    )
    digests = tinymodel.file_digests(model_dir)
    changed = {name for name, digest in PINNED_DIGESTS.items() if digests[name] != digest}
    assert not changed, (
        f"{sorted(changed)} changed without a format_version bump: cached copies would be stale"
    )
