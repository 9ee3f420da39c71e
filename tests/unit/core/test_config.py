from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from trustlab.core.config import ConfigError, Section, deep_merge, load_params, load_section
from trustlab.stages import validate_params


@dataclass(frozen=True)
class Inner(Section):
    width: int = 4


@dataclass(frozen=True)
class Toy(Section):
    SECTION = "toy"
    lr: float = 1e-3
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    loss: Literal["ce", "focal"] = "ce"
    gamma: float = 2.0
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        self.check_range("lr", 0, lo_open=True)
        self.check_range("gamma", 0)
        self.check_range("seeds", 0)


def test_defaults_and_coercion():
    cfg = Toy.from_dict({"lr": "1e-2", "inner": {"width": 8}})
    assert cfg.lr == pytest.approx(0.01) and cfg.inner.width == 8 and cfg.seeds == [0, 1]
    assert Toy.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lrr": 1}, "toy: unknown key 'lrr' (did you mean 'lr'?); allowed keys are gamma, inner, loss, lr, seeds"),
        ({"lr": 0}, "toy.lr = 0.0 is out of range: allowed 0 < lr"),
        ({"gamma": -1}, "toy.gamma = -1.0 is out of range: allowed 0 <= gamma"),
        ({"loss": "mse"}, "toy.loss = 'mse' is not allowed: choose one of 'ce', 'focal'"),
        ({"seeds": [0, "x"]}, "toy.seeds[1] = 'x' has the wrong type: expected an integer"),
        ({"seeds": 3}, "toy.seeds = 3 has the wrong type: expected a list"),
        ({"inner": {"depth": 2}}, "toy.inner: unknown key 'depth'; allowed keys are width"),
        ({"inner": {"width": 2.5}}, "toy.inner.width = 2.5 has the wrong type: expected an integer"),
        ({"lr": True}, "toy.lr = True has the wrong type: expected a number"),
    ],
)
def test_errors_name_key_value_and_allowed(bad, message):
    with pytest.raises(ConfigError) as info:
        Toy.from_dict(bad)
    assert str(info.value).startswith(message)


def test_replace_revalidates():
    with pytest.raises(ConfigError, match="toy.gamma"):
        Toy().replace(gamma=-3)


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 5}, "e": 2}) == {"a": {"b": 5, "c": 2}, "d": 1, "e": 2}


def test_profile_overrides_and_unknown_profile(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "params.yaml").write_text("toy:\n  lr: 0.1\n  seeds: [0, 1, 2]\n")
    (tmp_path / "profiles" / "smoke.yaml").write_text("toy:\n  seeds: [0]\n")
    cfg = load_section(Toy, path=tmp_path / "params.yaml", profile="smoke")
    assert cfg.seeds == [0] and cfg.lr == pytest.approx(0.1)
    assert load_section(Toy, {"lr": 0.5}, path=tmp_path / "params.yaml").lr == 0.5
    with pytest.raises(ConfigError, match="profile = 'nope' is not allowed"):
        load_params(tmp_path / "params.yaml", profile="nope")


def test_repository_params_and_profiles_are_valid(root):
    from trustlab.core.config import available_profiles

    for profile in ["cpu", *available_profiles(root)]:
        if profile == "gpu":
            continue  # the gpu profile is validated against the machine, see test_profiles
        validate_params(load_params(root / "params.yaml", profile))


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown top-level key 'calibratoin'"):
        validate_params({"calibratoin": {}})
