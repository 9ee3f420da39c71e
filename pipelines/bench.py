"""Benchmarks of the shared GPT at the default size, as ratios measured in one run.

    python pipelines/bench.py [--threads N] [--steps 30] [--out reports/bench/lm.json]

Prints training tokens/s (Lightning ``fit``, packed random tokens), generation tokens/s with
and without the KV cache (batch 32, 64 new tokens, greedy, no early stop), and the forward-time
cost of returning attention probabilities (explicit softmax) relative to the SDPA fast path, and
a NoiseFiT training step relative to an SFT step. Targets: KV cache >= 3x faster than uncached;
probabilities <= 1.5x the fast path's forward; NoiseFiT step <= 3.3x the SFT step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from trustlab.core.io import write_json  # noqa: E402
from trustlab.lm.flops import matmul_peak, training_flops_per_token  # noqa: E402
from trustlab.lm.generation import generate  # noqa: E402
from trustlab.lm.gpt import GPT, GPTConfig  # noqa: E402
from trustlab.lm.tokenizer import ByteTokenizer  # noqa: E402
from trustlab.lm.training import CausalLMModule, ExampleDataset, _set_threads, fit  # noqa: E402

DEFAULT = dict(vocab_size=261, block_size=128, n_layer=4, n_head=4, n_embd=128)  # byte vocab: 256 + 5 specials


class _StepTimer(L.Callback):
    """Wall time of each training step (batch start to batch end)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t0)


def bench_training(steps: int, batch_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    T = DEFAULT["block_size"]
    items = [{"input_ids": torch.randint(5, 256, (T,), generator=g).tolist(), "loss_mask": [0] + [1] * (T - 1)}
             for _ in range(batch_size * 4)]  # fmt: skip
    timer = _StepTimer()
    module = CausalLMModule(GPT(GPTConfig(**DEFAULT)), warmup_steps=5)
    data = ExampleDataset(items)
    fit(module, data, pad_id=256, batch_size=batch_size, max_steps=steps, progress=False, callbacks=[timer])
    per_step = statistics.median(timer.times[3:])  # skip warm-up steps
    return {"train_batch": batch_size, "train_step_s": per_step, "train_tokens_per_s": batch_size * T / per_step}


def bench_noisefit_step(steps: int, batch_size: int, rounds: int = 2) -> dict:
    """Median training-step time of NoiseFiT-Largest (clean + two noisy passes, backward through
    all three) relative to SFT's, both fine-tuning the default GPT on the same batches. The two
    alternate ``rounds`` times, so that load from other processes hits both alike."""
    from trustlab.noisefit.config import NoiseFitConfig
    from trustlab.noisefit.module import NoiseFitModule

    g = torch.Generator().manual_seed(3)
    T = DEFAULT["block_size"]
    items = [{"input_ids": torch.randint(5, 256, (T,), generator=g).tolist(), "loss_mask": [0] * 16 + [1] * (T - 16)}
             for _ in range(batch_size * 4)]  # fmt: skip
    cfg = NoiseFitConfig.from_dict({"k": 2, "sigma0": 0.1, "warmup_steps": 1})
    times: dict[str, list[float]] = {"sft": [], "noisefit_largest": []}
    for _ in range(rounds):
        for variant in times:
            torch.manual_seed(0)
            module = NoiseFitModule(GPT(GPTConfig(**DEFAULT)), variant, cfg, pad_id=256)
            fit(module, ExampleDataset(items), pad_id=256, batch_size=batch_size, max_steps=steps, progress=False)
            times[variant] += module.step_times[3:]  # skip warm-up steps
    sft, nf = statistics.median(times["sft"]), statistics.median(times["noisefit_largest"])
    return {"sft_step_s": sft, "noisefit_step_s": nf, "noisefit_step_ratio": nf / sft}


def bench_generation(model, tok, batch: int, new_tokens: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    prompts = [[tok.bos_id, *torch.randint(5, 256, (16,), generator=g).tolist()] for _ in range(batch)]
    out = {}
    for cached in (True, False):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate(model, tok, prompts, max_new_tokens=new_tokens, use_cache=cached, batch_size=batch,
                     stop_at_eos=False)  # fmt: skip
            times.append(time.perf_counter() - t0)
        key = "cached" if cached else "uncached"
        out[f"gen_{key}_s"] = statistics.median(times)
        out[f"gen_{key}_tokens_per_s"] = batch * new_tokens / out[f"gen_{key}_s"]
    out["kv_cache_speedup"] = out["gen_uncached_s"] / out["gen_cached_s"]
    return out


def _paired_times(fast_fn, slow_fn, repeats: int) -> tuple[float, float]:
    """Median wall times of two functions, measured alternately (so that load from other
    processes hits both alike), after one warm-up call each."""
    fast_fn(), slow_fn()
    fast, slow = [], []
    for _ in range(repeats):
        for fn, acc in ((fast_fn, fast), (slow_fn, slow)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(fast), statistics.median(slow)


def bench_attention_probs(model, batch: int, repeats: int) -> dict:
    x = torch.randint(5, 256, (batch, DEFAULT["block_size"]), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        fast, probs = _paired_times(lambda: model(x), lambda: model(x, output_attentions=True), repeats)
    model.train()

    def train_step(need):
        model.zero_grad(set_to_none=True)
        out = model(x, output_attentions=need)
        loss = out.logits.float().logsumexp(-1).mean()
        if need:  # what the entropy family does: an entropy term on every layer's probabilities
            loss = loss + sum(-(a * torch.log(a + 1e-9)).sum(-1).mean() for a in out.attentions) * 1e-3
        loss.backward()

    fast_tr, probs_tr = _paired_times(lambda: train_step(False), lambda: train_step(True), max(repeats // 2, 3))
    model.eval()
    return {
        "fwd_batch": batch,
        "fwd_sdpa_s": fast,
        "fwd_probs_s": probs,
        "probs_fwd_ratio": probs / fast,
        "train_step_sdpa_s": fast_tr,
        "train_step_probs_entropy_s": probs_tr,
        "probs_train_ratio": probs_tr / fast_tr,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores, max 8)")
    ap.add_argument("--steps", type=int, default=30, help="training steps to time")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)

    threads = _set_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**DEFAULT)).eval()
    tok = ByteTokenizer()
    res = {
        "config": DEFAULT,
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "params": model.num_params(),
    }
    res.update(bench_attention_probs(model, batch=32, repeats=args.repeats))
    res.update(bench_generation(model, tok, batch=32, new_tokens=64, repeats=max(args.repeats // 2, 2)))
    res.update(bench_training(args.steps, args.train_batch))
    res.update(bench_noisefit_step(max(args.steps // 2, 8), args.train_batch))
    res["matmul_peak_flops_1thread"] = matmul_peak(1)
    res["matmul_peak_flops"] = matmul_peak(threads)
    res["train_flops_per_token"] = training_flops_per_token(DEFAULT)
    res["train_share_of_peak"] = res["train_flops_per_token"] * res["train_tokens_per_s"] / res["matmul_peak_flops"]

    ok_cache = res["kv_cache_speedup"] >= 3.0
    ok_probs = res["probs_fwd_ratio"] <= 1.5
    ok_noisefit = res["noisefit_step_ratio"] <= 3.3
    r = res
    mark = lambda ok: "ok" if ok else "MISSED"  # noqa: E731
    lines = [
        f"GPT L={DEFAULT['n_layer']} H={DEFAULT['n_head']} d={DEFAULT['n_embd']} T={DEFAULT['block_size']} "
        f"V={DEFAULT['vocab_size']} ({r['params'] / 1e6:.2f}M params), {threads} threads, torch {torch.__version__}",
        f"  training             {r['train_tokens_per_s']:>9,.0f} tokens/s  (batch {args.train_batch}, Lightning fit)",
        f"  matmul peak (fp32)   {r['matmul_peak_flops'] / 1e9:>9.1f} GFLOP/s at {threads} thread(s), "
        f"{r['matmul_peak_flops_1thread'] / 1e9:.1f} at 1",
        f"  training share of peak {r['train_share_of_peak']:>7.1%}  "
        f"({r['train_flops_per_token'] / 1e6:.2f} MFLOP/token x tokens/s / peak at {threads} thread(s))",
        f"  generation, cache    {r['gen_cached_tokens_per_s']:>9,.0f} tokens/s  (batch 32, 64 new tokens, greedy)",
        f"  generation, no cache {r['gen_uncached_tokens_per_s']:>9,.0f} tokens/s",
        f"  KV-cache speedup     {r['kv_cache_speedup']:>9.2f}x         target >= 3x:   {mark(ok_cache)}",
        f"  probs / SDPA forward {r['probs_fwd_ratio']:>9.2f}x         target <= 1.5x: {mark(ok_probs)}"
        f"  ({r['fwd_sdpa_s'] * 1e3:.1f} vs {r['fwd_probs_s'] * 1e3:.1f} ms, batch 32)",
        f"  probs + entropy loss / SDPA, train step {r['probs_train_ratio']:.2f}x",
        f"  NoiseFiT / SFT step  {r['noisefit_step_ratio']:>9.2f}x         target <= 3.3x: {mark(ok_noisefit)}"
        f"  ({r['sft_step_s'] * 1e3:.1f} vs {r['noisefit_step_s'] * 1e3:.1f} ms, batch {args.train_batch})",
    ]
    print("\n".join(lines))
    res["targets_met"] = {"kv_cache_3x": ok_cache, "probs_1p5x": ok_probs, "noisefit_3p3x": ok_noisefit}
    if args.out:
        write_json(args.out, res)
    return res


if __name__ == "__main__":
    # a missed target is a failure, so `make bench` cannot quietly report a regression
    raise SystemExit(0 if all(main()["targets_met"].values()) else 1)
