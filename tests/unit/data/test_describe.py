"""The 00_data report helpers (trustlab.data.describe) on smoke data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trustlab.data import describe as dr
from trustlab.data import tasks as T
from trustlab.data.config import DataConfig
from trustlab.data.generate import generate_all
from trustlab.lm.base_model import BaseModelConfig, fit_tokenizer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory) -> Path:
    smoke = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())["data"]
    smoke["code_corpus"] = {**smoke.get("code_corpus", {}), "max_bytes": 30000}
    out = tmp_path_factory.mktemp("dr") / "data" / "generated"
    generate_all(DataConfig.from_dict(smoke), out)
    return out


def test_counts_match_the_files_and_the_manifest(gen_dir):
    counts = dr.counts_frame(gen_dir)
    manifest = T.load_manifest(gen_dir)["counts"]
    row = lambda t, s: counts[(counts.task == t) & (counts.split == s)].iloc[0]  # noqa: E731
    for split in T.WORLD_QA_SPLITS:
        assert row("world_qa", split).records == manifest["world"][split]
    assert row("arithmetic", "ood").records == manifest["arithmetic"]["ood"]
    for split in T.REAL_SPLITS:
        assert row("world_bio", split).records == manifest["world"]["bios_per_split"][split]
    assert row("code", "train").bytes + row("code", "val").bytes == manifest["code_corpus"]["bytes"]
    assert dr.generated_dir(gen_dir.parent) == gen_dir


def test_attribute_tables(gen_dir):
    people = T.load_people(gen_dir)
    dist = dr.attribute_distribution(gen_dir)
    for a in people["attributes"]:
        assert dist[dist.attribute == a].people.sum() == len(people["people"])
    summ = dr.attribute_summary(gen_dir).set_index("attribute")
    assert ((summ.majority_share > 0) & (summ.majority_share <= 1)).all()
    assert ((summ.entropy_norm >= 0) & (summ.entropy_norm <= 1 + 1e-9)).all()
    assert (summ.values_used <= summ.closed_set).all()


def test_fingerprints_and_tamper_detection(gen_dir, tmp_path):
    info = dr.fingerprints(gen_dir)
    assert info["fingerprint"] == T.load_manifest(gen_dir)["fingerprint"]
    assert info["modified_files"] == []
    assert len(info["code_corpus"]["corpus_sha256"]) == 64
    frame = dr.fingerprint_frame(info)
    assert frame.sha256.iloc[0] == info["fingerprint"]
    # a copy with one file changed is reported
    import shutil

    copy = tmp_path / "generated"
    shutil.copytree(gen_dir, copy)
    path = copy / "arithmetic" / "test.jsonl"
    path.write_text(path.read_text() + "\n")
    assert dr.fingerprints(copy)["modified_files"] == ["arithmetic/test.jsonl"]


def test_token_stats_known_layout(gen_dir):
    tok = fit_tokenizer(gen_dir, BaseModelConfig.from_dict({"mix": {"code": 0.0}}))  # the base model's recipe
    stats = dr.token_stats(gen_dir, tok).set_index(["task", "split"])
    assert (stats.unk_share == 0).all()
    rec = T.load_task(gen_dir, "context_copy", "test")
    # context copy: every character of the prompt is one piece; + bos, sep, answer digit, eos
    expected = max(len(tok.encode(r["prompt"])) + 4 for r in rec)
    assert stats.loc[("context_copy", "test")].max_tokens == expected
    assert stats.loc[("context_copy", "test")].max_answer_tokens == 1
    totals = dr.corpus_token_totals(gen_dir, tok)
    assert totals["vocab_size"] == tok.vocab_size and totals["pretraining_bio_tokens"] > 0
    head = dr.headline(dr.counts_frame(gen_dir), dr.fingerprints(gen_dir), totals, dr.token_stats(gen_dir, tok))
    assert head["n_qa_heldout"] == len(T.load_task(gen_dir, "world_qa", "qa_heldout"))
    assert head["modified_files"] == 0
