"""Corrupt inputs are named: a truncated or edited data file, a truncated model file."""

from __future__ import annotations

import pytest

from trustlab.core.io import DataFileError, read_jsonl
from trustlab.data import tasks
from trustlab.data.config import DataConfig
from trustlab.data.generate import generate_all


@pytest.fixture
def generated(tmp_path):
    cfg = DataConfig.from_dict({"world": {"n_people": 12, "n_nonexistent": 4, "n_first_names": 10, "n_last_names": 10},
                                "arithmetic": {"n_train": 20, "n_test": 10, "n_ood": 10},
                                "instructions": {"n_train": 10, "n_test": 5},
                                "context_copy": {"n_train": 10, "n_test": 5},
                                "code_corpus": {"max_bytes": 20000, "max_file_bytes": 5000}})  # fmt: skip
    out = tmp_path / "generated"
    generate_all(cfg, out)
    tasks._VERIFIED.discard(out.resolve())
    return out


def test_a_truncated_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "bios.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "text": "cut he\n')
    with pytest.raises(DataFileError, match=r"bios\.jsonl, line 2 column \d+: not valid JSON"):
        read_jsonl(path)


def test_a_changed_data_file_fails_its_sha256_check_with_its_name(generated):
    bios = generated / "world" / "bios.jsonl"
    bios.write_text(bios.read_text()[:-40])  # truncated
    with pytest.raises(DataFileError, match=r"world/bios\.jsonl: missing, or its sha256 differs"):
        tasks.load_bios(generated)


def test_intact_data_loads(generated):
    assert tasks.load_bios(generated) and tasks.load_task(generated, "arithmetic", "test")


def test_a_truncated_model_file_names_its_path(tmp_path):
    from trustlab.lm.checkpoint import MODEL_FILE, load_weights, save_model
    from trustlab.lm.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{weights}.*truncated or corrupt"):
        load_weights(model, tmp_path / "m")
