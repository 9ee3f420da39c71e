"""Training: data, schedule, determinism, checkpoints and exact resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from trustlab.lm.checkpoint import load_model, load_pretrained, load_training_state, save_model
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.losses import causal_lm_loss
from trustlab.lm.tokenizer import WordTokenizer
from trustlab.lm.training import (
    CausalLMModule,
    ExampleDataset,
    PackedTextDataset,
    PairDataset,
    StepBatchSampler,
    TextDataset,
    collate,
    fit,
    warmup_cosine,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread is fastest, and robust on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PAIRS = [(f"what is {a} plus {b} ?", f" {a + b}") for a in range(6) for b in range(6)]
TEXTS = [f"person {i} lives in city {i % 3} and works at firm {i % 4} ." for i in range(12)]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.fit([p + a for p, a in PAIRS] + TEXTS)


def make_model(tok, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def run(tok, steps=6, seed=0, model_seed=0, **kw):
    module = CausalLMModule(make_model(tok, model_seed), lr=3e-3, warmup_steps=2)
    data = PairDataset(tok, PAIRS, 32)
    return fit(module, data, pad_id=tok.pad_id, batch_size=8, max_steps=steps, seed=seed, threads=1, **kw)


def test_datasets_and_collate(tok):
    pairs = PairDataset(tok, PAIRS[:3], 32)
    batch = collate([pairs[0], {"input_ids": [1, 5], "loss_mask": [0, 1]}], tok.pad_id)
    n = len(pairs[0]["input_ids"])
    assert batch["input_ids"].shape == (2, n)
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * (n - 2)
    assert batch["input_ids"][1, 2:].eq(tok.pad_id).all() and batch["loss_mask"][1, 2:].eq(0).all()
    assert batch["loss_mask"][0].tolist() == pairs[0]["loss_mask"]
    extra = collate([{"input_ids": [1], "loss_mask": [0], "label": 1, "meta": "a"}] * 2, 0)
    assert extra["label"].tolist() == [1, 1] and extra["meta"] == ["a", "a"]
    packed = PackedTextDataset(tok, TEXTS, 16)
    stream = [t for text in TEXTS for t in tok.encode_text(text)[0]]
    assert len(packed) == len(stream) // 16 and packed[1]["input_ids"] == stream[16:32]
    chunks = TextDataset(tok, TEXTS[:1] * 1, 8)
    assert [t for it in chunks for t in it["input_ids"]] == tok.encode_text(TEXTS[0])[0]
    assert PairDataset(tok, PAIRS[:2], 4).n_truncated == 2


def test_step_sampler_is_a_function_of_step():
    full = list(StepBatchSampler(10, 4, 9, seed=3))
    assert len(full) == 9 and [len(b) for b in full[:3]] == [4, 4, 2]
    assert sorted(i for b in full[:3] for i in b) == list(range(10))  # an epoch covers the data once
    assert list(StepBatchSampler(10, 4, 9, seed=3, start_step=5)) == full[5:]
    assert list(StepBatchSampler(10, 4, 9, seed=4)) != full


def test_warmup_cosine_schedule():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_max_steps_xor_epochs(tok):
    module = CausalLMModule(make_model(tok))
    data = PairDataset(tok, PAIRS, 32)
    with pytest.raises(ValueError, match="exactly one"):
        fit(module, data, pad_id=0, max_steps=3, epochs=1)
    with pytest.raises(ValueError, match="exactly one"):
        fit(module, data, pad_id=0)
    res = fit(module, data, tokenizer=tok, batch_size=10, epochs=2, threads=1)
    assert res.steps == 8 and len(res.curve) == 8 and res.curve[-1]["step"] == 8  # 2 * ceil(36 / 10)


def test_training_is_deterministic_and_learns(tok):
    a = run(tok, steps=30, val_data=PairDataset(tok, PAIRS[:8], 32), val_every=12)
    b = run(tok, steps=30)
    assert [r["loss"] for r in a.curve] == [r["loss"] for r in b.curve]
    assert a.curve[-1]["loss"] < 0.6 * a.curve[0]["loss"]
    assert set(a.curve[0]) >= {"step", "loss", "lr", "tokens", "ce"}
    assert [r["step"] for r in a.val_curve] == [12, 24, 30]  # every 12 steps and at the end
    assert a.module.model.training
    assert a.curve[0]["lr"] == pytest.approx(1.5e-3)  # warmup step 1 of 2
    assert a.tokens > 0 and a.tokens_per_s > 0
    c = run(tok, steps=5, seed=1)
    assert [r["loss"] for r in c.curve] != [r["loss"] for r in a.curve[:5]]


class _StopAt(L.Callback):
    def __init__(self, step):
        self.stop = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.step >= self.stop:
            trainer.should_stop = True


def test_checkpoint_resume_matches_uninterrupted(tok, tmp_path):
    kw = dict(dropout=0.1)
    data = PairDataset(tok, PAIRS, 32)

    def module(seed):
        return CausalLMModule(make_model(tok, seed, **kw), lr=3e-3, warmup_steps=2)

    full = fit(module(0), data, pad_id=tok.pad_id, batch_size=8, max_steps=8, seed=5, threads=1)
    part = fit(module(0), data, pad_id=tok.pad_id, batch_size=8, max_steps=8, seed=5, threads=1,
               checkpoint_dir=tmp_path, checkpoint_every=4, tokenizer=tok, callbacks=[_StopAt(4)])  # fmt: skip
    assert part.steps == 4
    state = load_training_state(tmp_path)
    assert state["step"] == 4 and isinstance(state["optimizer"], dict)
    resumed = fit(module(123), data, tokenizer=tok, batch_size=8, max_steps=8, seed=5, threads=1, resume_from=tmp_path)
    assert resumed.steps == 4 and resumed.module.step == 8
    assert [r["step"] for r in resumed.module.curve] == list(range(1, 9))
    assert [r["loss"] for r in resumed.module.curve] == pytest.approx([r["loss"] for r in full.curve], abs=1e-6)
    for (n, p), (_, q) in zip(full.module.model.named_parameters(), resumed.module.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    with pytest.raises(ValueError, match="schedule"):
        fit(module(1), data, pad_id=tok.pad_id, batch_size=8, max_steps=12, seed=5, threads=1, resume_from=tmp_path)


def test_model_round_trip(tok, tmp_path):
    m = make_model(tok, norm="rmsnorm", activation="relu").eval()
    save_model(m, tmp_path, tok, metadata={"note": "x"})
    again, tok2 = load_pretrained(tmp_path)
    assert again.config == m.config and tok2.itos == tok.itos
    assert again.lm_head.weight is again.wte.weight
    x = torch.tensor([tok.encode_prompt("what is 1 plus 2 ?")])
    with torch.no_grad():
        assert torch.equal(m(x).logits, again(x).logits)
    assert not load_model(tmp_path).training


class _Twice(CausalLMModule):
    def compute_loss(self, batch):
        assert self.model.training  # fit() trains even a model handed over in eval mode
        a = causal_lm_loss(self(batch).logits, batch["input_ids"], batch["loss_mask"])
        return 2 * a, {"ce": a.detach(), "double": (2 * a).detach()}


def test_subclass_compute_loss_hook(tok):
    module = _Twice(make_model(tok).eval(), warmup_steps=1)
    logged = []
    res = fit(module, ExampleDataset(PairDataset(tok, PAIRS, 32).items), pad_id=tok.pad_id, batch_size=8,
              max_steps=2, threads=1, on_log=logged.append)  # fmt: skip
    assert res.curve[0]["loss"] == pytest.approx(res.curve[0]["double"]) == pytest.approx(2 * res.curve[0]["ce"])
    assert len(logged) == 2 and module.on_log is None
