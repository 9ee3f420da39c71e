"""The registered fine-tuning objectives: one training step of every variant on a tiny model
gives the forward passes and loss parts recorded from the objectives' first implementation
(a single module with per-kind branches), so the registry changed no number."""

from __future__ import annotations

import pytest
import torch

from trustlab.core.config import ConfigError
from trustlab.lm.gpt import GPT, GPTConfig
from trustlab.lm.tokenizer import WordTokenizer
from trustlab.lm.training import PairDataset, collate
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.module import NoiseFitModule
from trustlab.noisefit.objectives import OBJECTIVES, NoiseFiT, build_objective, forward_passes
from trustlab.noisefit.variants import VARIANTS

PAIRS = [(f"what is {a} plus {b} ?", f" {a + b}") for a in range(6) for b in range(6)]
CFG = NoiseFitConfig.from_dict({"k": 2, "lr": 3e-3, "warmup_steps": 1, "sigma0": 5.0})

# variant -> (gradient enabled in each forward pass of one step, loss parts); seed 0 model,
# torch.manual_seed(1) before the step, SNR draws from Generator().manual_seed(0)
NF_SOFT, NF_CONS, NF_CE = 0.0004118506913073361, 0.0007124777766875923, 3.042144536972046
REFERENCE = {
    "sft": ([True], {"ce": 3.042144536972046, "total": 3.042144536972046}),
    "neftune": ([True], {"ce": 2.960651159286499, "total": 2.960651159286499}),
    "rdrop": ([True, True], {"ce": 3.048060894012451, "consistency": 0.0012627769028767943,
                             "total": 3.049323558807373}),
    "noisefit_largest": ([True] * 3, {"ce": NF_CE, "soft": NF_SOFT, "consistency": NF_CONS,
                                      "total": 1.5213494300842285}),
    "noisefit_lowest": ([True] * 3, {"ce": NF_CE, "soft": 0.00037673432962037623,
                                     "consistency": 0.0006516967550851405, "total": 1.5213258266448975}),
    "noisefit_ce_only": ([True], {"ce": 3.0268421173095703, "total": 3.0268421173095703}),
    "noisefit_no_consistency": ([True] * 3, {"ce": NF_CE, "soft": NF_SOFT, "consistency": NF_CONS,
                                             "total": 1.5212781429290771}),
    "noisefit_no_soft": ([True] * 3, {"ce": NF_CE, "soft": NF_SOFT, "consistency": NF_CONS,
                                      "total": 1.5211435556411743}),
    "noisefit_kl_only": ([False, True, True], {"ce": NF_CE, "soft": NF_SOFT, "consistency": NF_CONS,
                                               "total": NF_SOFT}),
    "noisefit_consistency_only": ([False, True, True], {"ce": NF_CE, "soft": NF_SOFT, "consistency": NF_CONS,
                                                        "total": NF_CONS}),
}  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.fit([p + a for p, a in PAIRS])


@pytest.fixture(scope="module")
def batch(tok):
    data = PairDataset(tok, PAIRS, 32)
    return collate([data[i] for i in range(8)], tok.pad_id)


def test_every_variant_has_a_reference_and_a_registered_objective():
    assert set(REFERENCE) == set(VARIANTS)
    assert {v.objective for v in VARIANTS.values()} <= set(OBJECTIVES)
    for v in VARIANTS.values():
        OBJECTIVES.check(v.objective, {"cfg": CFG, **v.options})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_step_gives_the_reference_passes_and_loss(tok, batch, variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=3, n_head=2, n_embd=32))
    module = NoiseFitModule(model, variant, CFG, pad_id=tok.pad_id, snr_generator=torch.Generator().manual_seed(0))
    model.train()
    if isinstance(module.objective, NoiseFiT):
        module.objective.select_layers(module, batch)  # the SNR pass is not part of the step
    grad_flags = []
    handle = model.register_forward_hook(lambda m, a, o: grad_flags.append(torch.is_grad_enabled()))
    torch.manual_seed(1)
    loss, parts = module.compute_loss(batch)
    handle.remove()
    module.release()
    expected_flags, expected_parts = REFERENCE[variant]
    assert grad_flags == expected_flags
    assert len(grad_flags) == module.objective.forward_passes == forward_passes(VARIANTS[variant])
    assert {k: float(v) for k, v in parts.items()} == pytest.approx(expected_parts, rel=1e-5, abs=1e-9)
    assert float(loss.detach()) == pytest.approx(expected_parts["total"], rel=1e-5, abs=1e-9)


def test_objectives_are_built_by_name_with_checked_arguments():
    assert build_objective(VARIANTS["noisefit_kl_only"], CFG).weights == (0.0, 1.0, 0.0)
    assert build_objective(VARIANTS["noisefit_largest"], CFG).weights == (CFG.alpha, 1 - CFG.alpha,
                                                                           CFG.lambda_consistency)  # fmt: skip
    with pytest.raises(ConfigError, match="has no parameter 'terms'"):
        OBJECTIVES.build("rdrop", cfg=CFG, terms="hybrid")
    with pytest.raises(ConfigError, match="unknown fine-tuning objective 'noisfit'.*did you mean 'noisefit'"):
        OBJECTIVES.get("noisfit")
    assert all(OBJECTIVES.describe().values())  # every objective documents itself in one line
