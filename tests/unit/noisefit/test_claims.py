"""The claims table on constructed results with known per-seed values: the engine's effect,
interval, test and verdict, and the rows of claims that cannot be tested."""

from __future__ import annotations

import math

import pytest

from trustlab.core.claims import COLUMNS, TEST_SIGN_FLIP, TEST_T, audit
from trustlab.noisefit import report, tables
from trustlab.noisefit.claims import CLAIMS, arm, claim_rows
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.run import Results

HALLUC = {  # variant -> held-out hallucination per seed 0, 1, 2
    "sft": [0.5, 0.6, 0.7],
    "neftune": [0.1, 0.2, 0.3],
    "noisefit_largest": [0.31, 0.4, 0.49],  # SFT - 0.19, - 0.2, - 0.21
    "noisefit_lowest": [0.36, 0.3, 0.54],  # differences -0.05, +0.1, -0.05: tied, mean 0
}


def constructed_results() -> Results:
    res = Results(config=NoiseFitConfig.from_dict({"seeds": [0, 1, 2]}).to_dict())
    res.rows.append({"setting": "base", "variant": "base", "label": "base model", "seed": 0, "halluc_qa_heldout": 0.9,
                     "s_em_qa_heldout": 0.2})  # fmt: skip
    for variant, values in HALLUC.items():
        for seed, h in enumerate(values):
            res.rows.append({"setting": "default", "variant": variant, "label": variant, "seed": seed,
                             "halluc_qa_heldout": h, "halluc_nonexistent_test": 0.5, "em_qa_train": 1.0,
                             "s_em_qa_heldout": float("nan") if variant == "sft" else 0.3 + 0.01 * seed,
                             "step_time": 0.01 * (3 if variant.startswith("noisefit") else 1), "train_s": 1.0,
                             "eval_s": 1.0, "step_ratio": 3.0 if variant.startswith("noisefit") else 1.0})  # fmt: skip
    return res


def rows_by_id():
    return {r["id"].split("/", 1)[1]: r for r in claim_rows(constructed_results().rows)}


def test_claims_are_data_with_stable_unique_ids_and_distinct_texts():
    assert len({c.id for c in CLAIMS}) == len({c.claim for c in CLAIMS}) == len(CLAIMS)
    assert all(c.unit == "seeds" and c.range == (0.0, 1.0) for c in CLAIMS)
    assert arm("sft@new_facts") == ("sft", "new_facts") and arm("sft") == ("sft", "default")
    with_paper_effect = [c for c in CLAIMS if c.paper_effect is not None]
    assert [c.id for c in with_paper_effect] == ["vs_base_sampled_accuracy"]
    assert with_paper_effect[0].paper_effect == pytest.approx(0.077) and with_paper_effect[0].paper_effect_source


def test_claims_verdicts_on_known_values():
    rows = rows_by_id()
    assert len(rows) == len(CLAIMS)  # one row per claim, tested or not
    assert audit(list(rows.values())) == []
    assert all(list(r) == list(COLUMNS) for r in rows.values())

    # NoiseFiT - SFT = -0.19, -0.2, -0.21: mean -0.2, sd 0.01, a paired t-test with 2 df
    vs_sft = rows["vs_sft_heldout"]
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t_0.975(2) * sd / sqrt(n)
    t = -0.2 / (0.01 / math.sqrt(3))
    assert vs_sft["effect"] == pytest.approx(-0.2) and vs_sft["n"] == 3 and vs_sft["test"] == TEST_T
    assert (vs_sft["ci_low"], vs_sft["ci_high"]) == pytest.approx((-0.2 - half, -0.2 + half))
    assert vs_sft["p_value"] == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2), rel=1e-4)  # t with 2 df
    assert vs_sft["verdict"] == "supported"

    # NoiseFiT - NEFTune = +0.21, +0.2, +0.19: significant the wrong way
    vs_neft = rows["vs_neftune_heldout"]
    assert vs_neft["effect"] == pytest.approx(0.2) and vs_neft["verdict"] == "not supported"

    # Largest - Lowest = -0.05, +0.1, -0.05: tied differences, the exact sign-flip test, mean 0
    hi_lo = rows["largest_vs_lowest_heldout"]
    assert hi_lo["effect"] == pytest.approx(0.0, abs=1e-12) and hi_lo["test"] == TEST_SIGN_FLIP
    assert hi_lo["verdict"] == "inconclusive" and hi_lo["ci_low"] < 0 < hi_lo["ci_high"]

    # equal non-existent rates in every seed: zero effect, no decision
    flat = rows["vs_sft_nonexistent"]
    assert flat["effect"] == 0 and flat["p_value"] == 1.0 and flat["verdict"] == "inconclusive"

    # against the base model, evaluated once and paired with every seed
    vs_base = rows["vs_base_sampled_accuracy"]
    assert vs_base["effect"] == pytest.approx(0.11) and vs_base["n"] == 3 and vs_base["paper_effect"] == 0.077

    # not evaluated: variants not run, and a metric that is NaN (SFT has no sampled accuracy)
    kl = rows["kl_only_collapse_wellformed"]
    assert kl["verdict"] == "not evaluated" and kl["reason"] == "not run: noisefit_kl_only" and kl["test"] == "none"
    assert rows["vs_sft_new_facts"]["reason"] == "not run: noisefit_largest@new_facts and sft@new_facts"
    nan = rows["vs_sft_sampled_accuracy"]
    assert nan["verdict"] == "not evaluated" and "NaN" in nan["reason"] and nan["effect"] is None


def test_readings_and_findings_follow_the_rows():
    res = constructed_results()
    claims = claim_rows(res.rows)
    frame = report.claims_table(claims).set_index("id")
    assert frame.loc["noisefit/vs_sft_heldout", "reading"].startswith("supported: NoiseFiT-Largest - SFT = -20.0 pp")
    assert frame.loc["noisefit/vs_neftune_heldout", "reading"].startswith("not supported: the opposite holds here")
    assert "+20.0 pp" in frame.loc["noisefit/vs_neftune_heldout", "reading"]
    assert frame.loc["noisefit/largest_vs_lowest_heldout", "reading"].startswith("inconclusive")
    assert frame.loc["noisefit/kl_only_collapse_accuracy", "reading"] == "not evaluated: not run: noisefit_kl_only"
    text = report.findings(res, claims)
    assert "not supported" in text and "not evaluated" in text and "2 supported, 1 not supported" in text
    head = report.headline(res, claims)
    assert head["claims_supported"] == 2 and head["claims_not_supported"] == 1  # vs SFT and vs the base model
    assert head["claims_not_evaluated"] == sum(r["verdict"] == "not evaluated" for r in claims)


def test_tables_on_known_values():
    res = constructed_results()
    t = tables.hallucination_table(res, sampled=False).set_index("variant")
    assert list(t.index) == ["base", "sft", "neftune", "noisefit_largest", "noisefit_lowest"]
    assert t.loc["sft", "halluc_qa_heldout"] == pytest.approx(0.6)
    assert t.loc["sft", "halluc_qa_heldout_std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert t.loc["base", "n_seeds"] == 1 and t.loc["base", "halluc_qa_heldout_std"] == 0.0
    fmt = tables.hallucination_table(res, fmt=True, sampled=False).set_index("variant")
    assert fmt.loc["sft", "halluc_qa_heldout"] == "0.600 ± 0.100"
    steps = tables.step_time_table(res).set_index("variant")
    assert steps.loc["noisefit_largest", "ratio_to_sft"] == pytest.approx(3.0)
    assert steps.loc["noisefit_largest", "forward_passes"] == 3 and steps.loc["neftune", "forward_passes"] == 1
    assert steps.loc["noisefit_largest", "ms_per_step"] == pytest.approx(30.0)
    passes = tables.forward_passes_table(res).set_index("variant")
    assert passes.loc["noisefit_largest", "forward_passes"] == 3 and "ms_per_step" not in passes.columns
    assert tables.hallucination_column("s_halluc_qa_heldout") == "sampled: held-out people"
    assert tables.hallucination_column("halluc_nonexistent_test_std") == "greedy: non-existent people (std)"
    long = tables.hallucination_long(res)
    row = long[(long.variant == "noisefit_largest") & (long.split == "qa_heldout")].iloc[0]
    assert row["mean"] == pytest.approx(0.4) and row.protocol == "greedy"
    head = report.headline(res, claim_rows(res.rows))
    assert head["noisefit_largest/hallucination_heldout"] == pytest.approx(0.4)
    assert not any("step_time" in k for k in head)


def test_snr_table_folds_the_base_model_numbers():
    res = Results()
    for variant in ("noisefit_largest", "noisefit_lowest", "noisefit_no_soft"):
        for seed, values in ((0, [3.0, 1.0, 2.0]), (1, [2.5, 1.5, 2.0])):
            picked = {0, 2} if variant != "noisefit_lowest" else {1, 2}
            res.snr += [{"setting": "default", "variant": variant, "seed": seed, "layer": i, "snr": v,
                         "signal": 1.0, "noise": 1.0 / v, "selected": i in picked}
                        for i, v in enumerate(values)]  # fmt: skip
    snr = tables.snr_table(res)
    assert list(snr.seed) == [0, 1]
    assert set(snr.variants) == {"noisefit_largest, noisefit_lowest, noisefit_no_soft"}
    assert list(snr.loc[0, ["layer 0", "layer 1", "layer 2"]]) == [3.0, 1.0, 2.0]
    picked = tables.selected_layers_table(res).set_index("variant")
    assert picked.loc["noisefit_lowest", "seed 0"] == "1 2" and picked.loc["noisefit_largest", "seed 1"] == "0 2"
