"""The entropy regularizer: tolerance, value, gradients, eval mode, weight decay, conversion."""

from __future__ import annotations

import math

import pytest
import torch

from trustlab.entropy_attention.model import build_model
from trustlab.entropy_attention.regularizer import EntropyRegularizer, lam_from_summed
from trustlab.entropy_attention.module import EntropyAttentionModule


def full_uniform(L=2, B=2, H=3, T=8):
    """Every query uniform over all S = T keys: entropy log S = Emax exactly."""
    return torch.full((L, B, H, T, T), 1.0 / T, dtype=torch.float64)


def test_zero_when_every_head_is_within_tolerance():
    reg = EntropyRegularizer(2, 3, gamma=0.5, theta_init=0.8).double().train()
    # delta = Emax - 0.8 Emax = 0.2 Emax <= Tol = 0.5 Emax everywhere
    assert reg(full_uniform()).item() == 0.0
    reg_exact = EntropyRegularizer(2, 3, gamma=0.0, theta_init=1.0).double().train()
    assert reg_exact(full_uniform()).item() == 0.0


def test_two_sided_value_and_mean_over_heads_layers_queries():
    T = 8
    emax = math.log(T)
    reg = EntropyRegularizer(2, 3, gamma=0.1, theta_init=0.0).double().train()
    assert reg(full_uniform(T=T)).item() == pytest.approx(emax**2)  # delta = Emax > Tol
    with torch.no_grad():
        reg.theta.fill_(2.0)  # entropy far below the threshold: delta = -Emax, penalised too
    assert reg(full_uniform(T=T)).item() == pytest.approx(emax**2)
    with torch.no_grad():
        reg.theta.fill_(1.0)
        reg.theta[0, 0] = 0.0  # one head of six out of tolerance
    assert reg(full_uniform(T=T)).item() == pytest.approx(emax**2 / 6)
    # padding queries are left out of the mean over batch x queries
    q = torch.ones(2, T)
    q[1, :4] = 0
    assert reg(full_uniform(T=T), query_mask=q).item() == pytest.approx(emax**2 / 6)


def test_gradient_reaches_theta_and_attention_parameters():
    torch.manual_seed(0)
    model = build_model("EReg(SM(t)+ScFuFFN)", vocab_size=261, block_size=16, n_layer=2, n_head=2, n_embd=16,
                        gamma=0.0, theta_init=0.1)
    ids = torch.randint(0, 256, (3, 16))
    out = model(ids, output_attentions=True)
    penalty = model.entropy_reg(out.attentions)
    assert penalty.item() > 0
    penalty.backward()
    assert model.entropy_reg.theta.grad is not None and model.entropy_reg.theta.grad.abs().sum() > 0
    for block in model.blocks:
        assert block.attn.c_attn.weight.grad.abs().sum() > 0
        assert block.attn.kernel.log_temperature.grad.abs().sum() > 0


def test_module_adds_the_penalty_in_training_only():
    torch.manual_seed(0)
    model = build_model("EReg(SM(t)+ScFuFFN)", vocab_size=261, block_size=16, n_layer=2, n_head=2, n_embd=16)
    module = EntropyAttentionModule(model, lam=0.5)
    ids = torch.randint(0, 256, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    module.train()
    loss, parts = module.compute_loss(batch)
    assert set(parts) == {"ce", "ent_reg"}
    assert float(parts["ent_reg"]) > 0  # random heads sit outside the tolerance band: the penalty is live
    assert loss.item() == pytest.approx(float(parts["ce"] + 0.5 * parts["ent_reg"]), rel=1e-6)
    module.eval()
    assert model.entropy_reg(model(ids, output_attentions=True).attentions).item() == 0.0
    loss_eval, parts_eval = module.compute_loss(batch)
    assert set(parts_eval) == {"ce"} and loss_eval.item() == pytest.approx(float(parts["ce"]), rel=1e-5)


def test_theta_and_temperatures_are_not_weight_decayed():
    model = build_model("EReg(SM(t)+ScFuFFN)", vocab_size=261, block_size=16, n_layer=2, n_head=2, n_embd=16)
    groups = model.param_groups_summary()
    flagged = [n for n in groups["no_decay"] if n.endswith(("theta", "log_temperature", ".alpha", ".beta"))]
    assert "entropy_reg.theta" in flagged
    assert {f"blocks.{i}.attn.kernel.log_temperature" for i in range(2)} <= set(flagged)
    assert not [n for n in groups["decay"] if "theta" in n or "temperature" in n]
    opt = model.configure_optimizers(weight_decay=0.1)
    theta = model.entropy_reg.theta
    assert [g["weight_decay"] for g in opt.param_groups if any(p is theta for p in g["params"])] == [0.0]


def test_lambda_conversion_and_gamma_range():
    assert lam_from_summed(1e-5, 128, 128) == pytest.approx(0.16384)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            EntropyRegularizer(2, 2, gamma=bad)
