"""The model section, the gpu profile, and the fail-early environment check."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

from trustlab import profiles
from trustlab.core.config import ConfigError, load_params
from trustlab.lm.model_config import ModelConfig, TrainerConfig, in_hf_cache
from trustlab.stages import validate_params

GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_model_defaults_are_todays_tiny_cpu_training():
    cfg = ModelConfig()
    assert (cfg.backend, cfg.path, cfg.device, cfg.dtype, cfg.lora.enabled) == ("tiny", "models/base", "cpu", "float32", False)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 16.0, 0.05, None)
    from trustlab.lm.training import fit

    defaults = {k: p.default for k, p in inspect.signature(fit).parameters.items()}
    assert cfg.trainer.fit_kwargs() == {k: defaults[k] for k in cfg.trainer.fit_kwargs()}  # == fit()'s defaults
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({"trainer": {"devices": "auto"}}).trainer.devices == "auto"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"backend": "hf"}, "model.name_or_path = None is not allowed: backend hf needs a local directory or a hub name"),
        ({"backend": "gguf"}, "model.backend = 'gguf' is not allowed: choose one of 'tiny', 'hf'"),
        ({"lora": {"enabled": True}}, "model.lora.enabled = true is not allowed with backend 'tiny'"),
        ({"lora": {"r": 0}}, "model.lora.r = 0 is out of range: allowed 1 <= r"),
        ({"lora": {"dropout": 1.0}}, "model.lora.dropout = 1.0 is out of range"),
        ({"lora": {"target_modules": []}}, "model.lora.target_modules = [] is not allowed: give at least one"),
        ({"dtype": "float16"}, "model.dtype = 'float16' is not allowed: float16 needs device cuda"),
        ({"device": "cuda"}, "model.device = 'cuda' but model.trainer.accelerator = 'cpu'"),
        ({"trainer": {"devices": 0}}, "model.trainer.devices = 0 is out of range: allowed 1 <= devices"),
        ({"trainer": {"devices": "two"}}, "model.trainer.devices = 'two' has the wrong type: expected int or one of 'auto'"),
        ({"trainer": {"strategy": "deepspeed"}}, "model.trainer.strategy = 'deepspeed' is not allowed: choose one of"),
        ({"trainer": {"precision": "16-mixed"}}, "model.trainer.precision = '16-mixed' is not allowed: 16-mixed needs accelerator gpu"),
        ({"trainer": {"strategy": "fsdp"}}, "model.trainer.strategy = 'fsdp' is not allowed: fsdp needs accelerator gpu"),
        ({"trainer": {"accumulate_grad_batches": 0}}, "model.trainer.accumulate_grad_batches = 0 is out of range"),
        ({"trainer": {"num_nodes": 2}}, "model.trainer.strategy = 'auto' is not allowed: num_nodes = 2 needs strategy ddp or fsdp"),
        ({"name_or_path": "gpt2"}, "model.name_or_path = 'gpt2' is not allowed: is read only with backend hf"),
        ({"trainr": {}}, "model: unknown key 'trainr'"),
    ],
)
def test_model_section_errors(bad, message):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(bad)
    assert str(info.value).startswith(message), str(info.value)


def test_gpu_profile_is_valid_and_asks_for_a_real_model(root):
    params = load_params(root / "params.yaml", "gpu")
    sections = validate_params(params)  # every key of profiles/gpu.yaml exists in its section
    model = sections["model"]
    assert params["profile"] == "gpu" and model.backend == "hf" and model.name_or_path == GPU_MODEL
    assert model.needs_cuda and model.trainer.precision == "bf16-mixed"
    assert model.lora.enabled and (model.lora.r, model.lora.alpha, model.lora.target_modules) == (8, 16.0, ["q_proj", "v_proj"])
    cpu = load_params(root / "params.yaml", "cpu")
    assert len(sections["noisefit"].seeds) > len(validate_params(cpu, only=["noisefit"])["noisefit"].seeds)


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA: the gpu profile may run here")
def test_gpu_profile_fails_early_on_this_machine(root):
    params = load_params(root / "params.yaml", "gpu")
    with pytest.raises(ConfigError) as info:
        profiles.check_environment(params, data_dir=root / "data")
    text = str(info.value)
    assert text.startswith("profile 'gpu' cannot run on this machine:")
    assert "model.device = 'cuda', model.trainer.accelerator = 'gpu' need CUDA, but torch.cuda.is_available() is False" in text
    if not in_hf_cache(GPU_MODEL):  # this machine has no network: a hub name must be cached
        assert f"model.name_or_path = '{GPU_MODEL}' is not a local directory" in text
        assert "downloads are off (model.local_files_only = true)" in text


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA: the gpu profile may run here")
@pytest.mark.parametrize("notebook", ["noisefit", "error_detection", "calibration"])
def test_runner_stops_the_gpu_profile_before_a_kernel_starts(root, tmp_path, notebook):
    """`dvc exp run -S profile=gpu` on this machine: each LM stage exits 2 within its first
    second with the environment check's message, and writes nothing."""
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, str(root / "pipelines" / "run_notebook.py"), notebook, "--profile", "gpu",
         "--reports-dir", str(reports), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "profile 'gpu' cannot run on this machine:" in proc.stderr and "need CUDA" in proc.stderr
    assert "Traceback" not in proc.stderr and not reports.exists()


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has CUDA with ``n`` GPUs (only the environment check is fooled)."""

    def set_gpus(n: int):
        monkeypatch.setattr(profiles, "_cuda", lambda: (n > 0, n))

    return set_gpus


def _hf_params(**model):
    base = {"backend": "hf", "name_or_path": "no-such-org/no-such-model", "device": "cuda",
            "trainer": {"accelerator": "gpu"}}  # fmt: skip
    return {"profile": "gpu", "model": {**base, **model}}


def test_check_environment_names_each_problem(fake_gpus, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    fake_gpus(1)
    # a hub name that is not cached, downloads off (the default)
    with pytest.raises(ConfigError, match="not a local directory .* nor in the Hugging Face cache, and downloads are off"):
        profiles.check_environment(_hf_params(), data_dir=tmp_path)
    # the same name as a local directory under data_dir: fine
    (tmp_path / "no-such-org" / "no-such-model").mkdir(parents=True)
    found = profiles.check_environment(_hf_params(), data_dir=tmp_path)
    assert found == {"profile": "gpu", "cuda": True, "gpus": 1, "model_source": "local"}
    # downloads allowed: a hub name is accepted (the stage downloads it)
    other = tmp_path / "elsewhere"
    assert profiles.check_environment(_hf_params(local_files_only=False), data_dir=other)["model_source"] == "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"):
        profiles.check_environment(_hf_params(local_files_only=False), data_dir=other)
    # more GPUs than the machine has
    params = _hf_params(trainer={"accelerator": "gpu", "devices": 4, "strategy": "ddp"})
    with pytest.raises(ConfigError, match=r"model.trainer.devices = 4 but this machine has 1 GPU\(s\)"):
        profiles.check_environment(params, data_dir=tmp_path)
    # no CUDA at all
    fake_gpus(0)
    with pytest.raises(ConfigError, match="need CUDA"):
        profiles.check_environment(_hf_params(), data_dir=tmp_path)


def test_default_params_pass_the_check(root):
    for name in ("cpu", "smoke"):
        found = profiles.check_environment(load_params(root / "params.yaml", name))
        assert found["profile"] == name and found["model_source"] == "tiny"


def test_trainer_section_feeds_fit():
    t = TrainerConfig.from_dict({"accelerator": "gpu", "devices": 2, "strategy": "ddp", "precision": "bf16-mixed",
                                 "accumulate_grad_batches": 4})  # fmt: skip
    assert t.fit_kwargs() == {"accelerator": "gpu", "devices": 2, "strategy": "ddp", "precision": "bf16-mixed",
                              "accumulate_grad_batches": 4, "num_nodes": 1}  # fmt: skip
    assert t.needs_cuda and not TrainerConfig().needs_cuda


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
def test_command_line_check(root):
    env = {**os.environ, "PYTHONPATH": str(root / "lib"), "TRUSTLAB_ROOT": str(root)}
    bad = subprocess.run([sys.executable, "-m", "trustlab.profiles", "--profile", "gpu"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "error: profile 'gpu' cannot run on this machine" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "trustlab.profiles", "--profile", "smoke"], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0 and "profile 'smoke' can run here" in ok.stdout
