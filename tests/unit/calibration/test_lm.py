"""Answer-level calibration of a language model (trustlab.calibration.lm): sequence confidences,
teacher-forced logits against generate/score_continuations, temperature fitting against known
temperatures, metrics against hand-computed values, splits, config errors, and the same code
path with a transformers model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustlab.calibration import lm as L
from trustlab.calibration.config import CalibrationConfig
from trustlab.calibration.metrics import confidence_bins, confidence_ece, ece
from trustlab.core.config import ConfigError
from trustlab.lm.generation import generate, score_continuations
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.tokenizer import WordTokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _arith_records(n: int, seed: int = 0) -> list[dict]:
    gen = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = (int(v) for v in gen.integers(0, 10, 2))
        pool = "arithmetic/test" if i % 2 == 0 else "arithmetic/ood"
        out.append({"id": f"r{i}", "task": "arithmetic", "split": pool.split("/")[1], "pool": pool,
                    "prompt": f"{a}+{b}=", "answer": str(a + b)})
    return out


@pytest.fixture(scope="module")
def tiny():
    """A tiny random GPT over a word tokenizer of arithmetic prompts, and 24 records."""
    records = _arith_records(24)
    tok = WordTokenizer.fit([r["prompt"] + " " + r["answer"] for r in records] + ["0 1 2 3 4 5 6 7 8 9 + ="])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    model.eval()
    return model, tok, records


# -- TokenLogits -----------------------------------------------------------------------------------


def test_sequence_logprob_matches_hand_computation():
    z1 = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    z2 = torch.tensor([[0.0, 0.0, 3.0]])
    tl = L.TokenLogits.from_rows([z1, z2], [[0, 1], [2]])
    def lp(z, y, t):
        p = np.exp(z.numpy().astype(np.float64) / t)
        return np.log(p[y] / p.sum())

    for t in (1.0, 0.5, 3.0):
        want = [lp(z1[0], 0, t) + lp(z1[1], 1, t), lp(z2[0], 2, t)]
        np.testing.assert_allclose(tl.sequence_logprob(t).numpy(), want, rtol=1e-12)
        np.testing.assert_allclose(tl.confidence(t), np.exp(want), rtol=1e-12)


def test_empty_answer_has_confidence_one_and_subset_renumbers():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    tl = L.TokenLogits.from_rows([z[:1], torch.zeros(0, 2), z[1:]], [[0], [], [1, 0]])
    conf = tl.confidence()
    assert conf[1] == 1.0 and tl.n_items == 3
    sub = tl.subset([2, 0])
    np.testing.assert_allclose(sub.confidence(), conf[[2, 0]])
    assert sub.item.tolist() == [0, 0, 1]


def test_from_rows_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="rows"):
        L.TokenLogits.from_rows([torch.zeros(2, 3)], [[0]])


# -- logits from the model -------------------------------------------------------------------------


def test_greedy_logits_reproduce_generate_and_answers_never_change(tiny):
    model, tok, records = tiny
    ans = L.collect_answers(model, tok, records, max_new_tokens=4, batch_size=5)
    gen = generate(model, tok, [r["prompt"] for r in records], max_new_tokens=4)
    ref = np.array([lp.sum() for lp in gen.token_logprobs])
    np.testing.assert_allclose(np.log(ans.greedy.confidence(1.0)), ref, atol=1e-5)
    assert ans.logprob_gap < 1e-5
    assert ans.responses == gen.texts
    # every greedy token is its row's argmax, for any temperature: TS cannot change an answer
    for t in (0.3, 1.0, 4.0):
        assert torch.equal((ans.greedy.logits / t).argmax(-1), ans.greedy.targets)


def test_gold_logits_match_score_continuations(tiny):
    model, tok, records = tiny
    ans = L.collect_answers(model, tok, records, max_new_tokens=3, with_gold=True)
    sc = score_continuations(model, tok, [r["prompt"] for r in records], [r["answer"] for r in records])
    np.testing.assert_allclose(ans.gold.sequence_logprob(1.0).numpy(), sc.sum_logprobs, atol=1e-5)


def test_continuation_longer_than_the_context_is_refused(tiny):
    model, tok, _ = tiny
    with pytest.raises(ValueError, match="context"):
        L.continuation_logits(model, [[tok.bos_id] * 30], [[tok.eos_id] * 4], tok.pad_id)


def test_correctness_comes_from_the_checkers(tiny):
    model, tok, records = tiny
    ans = L.collect_answers(model, tok, records, max_new_tokens=3, with_gold=False)
    from trustlab.data.checkers import is_correct

    assert ans.gold is None
    assert ans.correct.tolist() == [is_correct(r, t) for r, t in zip(records, ans.responses)]
    f = ans.frame()
    assert list(f.columns[:3]) == ["pool", "id", "prompt"] and len(f) == len(records)


# -- fitting the temperature -----------------------------------------------------------------------


def _synthetic(n: int, t_true: float, seed: int, gold_from_model: bool):
    """Answers whose correctness (or gold tokens) are drawn from the model at a known temperature."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 6, generator=g, dtype=torch.float64) * 3.0
    greedy = logits.argmax(-1)
    p_true = torch.softmax(logits / t_true, -1)
    conf = p_true.gather(1, greedy[:, None]).squeeze(1)
    correct = (torch.rand(n, generator=g, dtype=torch.float64) < conf).numpy()
    gold = torch.multinomial(p_true, 1, generator=g).squeeze(1) if gold_from_model else greedy
    rows = list(logits.float()[:, None, :])
    ans = L.LMAnswers(records=[{"pool": "p", "prompt": "", "answer": ""}] * n, responses=[""] * n, correct=correct,
                      finish_reasons=["eos"] * n, greedy=L.TokenLogits.from_rows(rows, greedy[:, None].tolist()),
                      gold=L.TokenLogits.from_rows(rows, gold[:, None].tolist()), logprob_gap=0.0)
    return ans


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_correctness_objective_recovers_a_known_temperature(t_true):
    ans = _synthetic(6000, t_true, seed=1, gold_from_model=False)
    t = L.fit_temperature(ans, objective="correctness")
    assert abs(t - t_true) / t_true < 0.12


@pytest.mark.parametrize("t_true", [0.7, 2.5])
def test_gold_nll_objective_recovers_a_known_temperature(t_true):
    ans = _synthetic(6000, t_true, seed=2, gold_from_model=True)
    t = L.fit_temperature(ans, objective="gold_nll")
    assert abs(t - t_true) / t_true < 0.1


def test_fitted_temperature_is_a_minimum_of_the_objective():
    ans = _synthetic(800, 1.7, seed=3, gold_from_model=True)
    correct = torch.as_tensor(ans.correct, dtype=torch.float64)
    for obj in L.OBJECTIVES:
        t = L.fit_temperature(ans, objective=obj)
        f = L._objective(obj, ans.greedy, correct, ans.gold)
        at = float(f(torch.tensor(t, dtype=torch.float64)))
        for s in (0.9, 1.1):
            assert at <= float(f(torch.tensor(t * s, dtype=torch.float64))) + 1e-9


def test_degenerate_validation_sets_give_a_bounded_temperature():
    ans = _synthetic(50, 1.0, seed=4, gold_from_model=False)
    ans.correct = np.ones(50, bool)  # all right: sharper is always better -> the lower bound
    t = L.fit_temperature(ans, objective="correctness")
    assert L.T_BOUNDS[0] <= t <= L.T_BOUNDS[1] and t < 0.2
    ans.correct = np.zeros(50, bool)  # all wrong: flatter is always better -> large T
    t = L.fit_temperature(ans, objective="correctness")
    assert L.T_BOUNDS[0] <= t <= L.T_BOUNDS[1] and t > 5


def test_fit_temperature_errors():
    ans = _synthetic(10, 1.0, seed=5, gold_from_model=False)
    with pytest.raises(ValueError, match="objective"):
        L.fit_temperature(ans, objective="greedy_nll")
    with pytest.raises(ValueError, match="at least one"):
        L.fit_temperature(ans, items=[])
    ans.gold = None
    with pytest.raises(ValueError, match="gold"):
        L.fit_temperature(ans, objective="gold_nll")


# -- metrics ---------------------------------------------------------------------------------------


def test_answer_metrics_known_values():
    m = L.answer_metrics(np.array([0.9, 0.1]), np.array([1, 0]))
    assert m["ece"] == pytest.approx(0.1)
    assert m["brier"] == pytest.approx(0.01)
    assert m["nll"] == pytest.approx(-np.log(0.9))
    assert m["auroc"] == 1.0 and m["acc"] == 0.5 and m["conf"] == pytest.approx(0.5)
    assert np.isnan(L.answer_metrics(np.array([0.3, 0.4]), np.array([1, 1]))["auroc"])


def test_confidence_ece_equals_top_label_ece():
    g = np.random.default_rng(0)
    probs = g.dirichlet(np.ones(5) * 0.7, size=400)
    y = g.integers(0, 5, 400)
    conf, correct = probs.max(1), probs.argmax(1) == y
    assert confidence_ece(conf, correct) == pytest.approx(ece(probs, y), abs=1e-12)


def test_confidence_one_goes_to_the_last_bin():
    b = confidence_bins(np.array([1.0, 1.0, 0.95]), np.array([1, 0, 1]), n_bins=10)
    assert b["count"][-1] == 3 and b["count"].sum() == 3
    assert confidence_ece(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0
    with pytest.raises(ValueError):
        confidence_ece(np.array([1.2]), np.array([1]))


# -- splits, items, the experiment ----------------------------------------------------------------


def test_split_val_test_partitions_every_pool():
    pools = np.array(["a"] * 10 + ["b"] * 3 + ["c"])
    val, test = L.split_val_test(pools, 0.3, seed=0)
    assert sorted(np.concatenate([val, test]).tolist()) == list(range(14))
    assert not set(val) & set(test)
    assert (pools[val] == "a").sum() == 3 and (pools[val] == "b").sum() == 1 and (pools[val] == "c").sum() == 1
    v2, t2 = L.split_val_test(pools, 0.3, seed=0)
    assert np.array_equal(val, v2) and np.array_equal(test, t2)
    v3, _ = L.split_val_test(pools, 0.3, seed=1)
    assert not np.array_equal(val, v3)


def test_sample_items_is_seeded_and_in_file_order(tmp_path):
    from trustlab.core.io import write_jsonl

    recs = [{"id": f"a{i}", "task": "arithmetic", "split": "test", "prompt": f"{i}+0=", "answer": str(i)}
            for i in range(20)]
    write_jsonl(tmp_path / "arithmetic" / "test.jsonl", recs)
    a = L.sample_items(tmp_path, ["arithmetic/test"], 5, seed=0)
    b = L.sample_items(tmp_path, ["arithmetic/test"], 5, seed=0)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [int(r["id"][1:]) for r in a] == sorted(int(r["id"][1:]) for r in a)
    assert all(r["pool"] == "arithmetic/test" for r in a) and "pool" not in recs[0]
    assert len(L.sample_items(tmp_path, ["arithmetic/test"], None)) == 20
    with pytest.raises(KeyError, match="no split"):
        L.sample_items(tmp_path, ["arithmetic/dev"], 5)


def test_missing_base_model_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="base_model"):
        L.require_base_model(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "config.json").write_text("{}")
    assert L.require_base_model(tmp_path) == tmp_path / "models" / "base"
    assert L.base_model_dir(tmp_path, "models/other") == tmp_path / "models" / "other"


def test_run_lm_calibration_tables_and_determinism(tiny):
    model, tok, records = tiny
    ans = L.collect_answers(model, tok, records, max_new_tokens=3)
    ans.correct = np.arange(len(records)) % 3 == 0  # a mix of right and wrong (the random model is always wrong)
    kw = {"seeds": [0, 1], "val_frac": 0.25, "objectives": ["correctness", "gold_nll"], "n_bins": 10}
    res = L.run_lm_calibration(ans, **kw)
    t = res.table
    assert set(t["method"]) == {"raw", "ts_correctness", "ts_gold_nll"}
    assert set(t["pool"]) == {"all", "arithmetic/test", "arithmetic/ood"}
    assert (t[t["method"] == "raw"]["temperature"] == 1.0).all()
    # accuracy is identical for every method (same answers), per seed and pool
    assert (t.groupby(["seed", "pool"])["acc"].nunique() == 1).all()
    n_all = t[(t["pool"] == "all")].groupby("seed")["n"].first()
    assert (n_all == 18).all()  # 24 items, 3 of 12 per pool for validation
    assert res.bins["count"].groupby(res.bins["method"]).sum().eq(18).all()
    assert len(res.temperatures) == 4
    again = L.run_lm_calibration(ans, **kw)
    assert t.equals(again.table)
    # the claim pairs the pooled rows of each split seed: ts_correctness minus raw
    from trustlab.calibration.claims import comparisons, claim_row

    lm_claim = next(c for c in comparisons() if c.spec.id == "lm_ts_correctness_ece")
    row = claim_row(lm_claim, t)
    pooled = t[t["pool"] == "all"].pivot(index="seed", columns="method", values="ece")
    assert row["n"] == 2 and row["metric"] == "lm_ece"
    assert row["effect"] == pytest.approx(float((pooled["ts_correctness"] - pooled["raw"]).mean()))


def test_lm_config_validation():
    cfg = CalibrationConfig.from_dict({"lm": {"n_items": 10, "objectives": ["gold_nll"]}})
    assert cfg.lm.n_items == 10 and cfg.lm.enabled
    bad = [
        ({"pools": ["world_qa/train"]}, "world_qa/qa_train"),
        ({"pools": ["arithmetic/test", "arithmetic/test"]}, "distinct"),
        ({"objectives": ["greedy_nll"]}, "correctness"),
        ({"objectives": []}, "at least one"),
        ({"val_frac": 0.0}, "val_frac"),
        ({"n_items": 1}, "n_items"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"unknown": 1}, "allowed keys"),
    ]
    for override, words in bad:
        with pytest.raises(ConfigError, match=words):
            CalibrationConfig.from_dict({"lm": override})


# -- a transformers model through the same code ------------------------------------------------


def test_hf_model_plugs_in(tiny):
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    from trustlab.lm.hf_backend import HFCausalLM

    _, tok, records = tiny
    torch.manual_seed(0)
    hf = HFCausalLM(GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1,
                                               n_head=2, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)))
    ans = L.collect_answers(hf, tok, records[:8], max_new_tokens=3)
    assert ans.logprob_gap < 1e-4
    sc = score_continuations(hf, tok, [r["prompt"] for r in records[:8]], [r["answer"] for r in records[:8]])
    np.testing.assert_allclose(ans.gold.sequence_logprob(1.0).numpy(), sc.sum_logprobs, atol=1e-4)
