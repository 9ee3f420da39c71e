"""The ``model:`` section's hf path on two architectures built here (GPT-2 and a Llama-style
config, random weights, a word-level tokenizer fit on a few sentences; nothing is downloaded):
loading, chat templates, LoRA through a NoiseFiT fine-tune, generation and detection statistics,
saving adapters, and the errors a user sees."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from trustlab.core.config import ConfigError  # noqa: E402
from trustlab.lm.generation import generate, score_continuations  # noqa: E402
from trustlab.lm.hf_backend import HFCausalLM, HFTokenizer  # noqa: E402
from trustlab.lm.hooks import decoder_blocks  # noqa: E402
from trustlab.lm.loading import load_model_and_tokenizer, model_summary, save_model_and_tokenizer  # noqa: E402
from trustlab.lm.training import PairDataset, fit  # noqa: E402

ARCHS = ["gpt2", "llama"]
PAIRS = [(f"what is {a} plus {b} ?", f" {(a + b) % 10}") for a in range(5) for b in range(5)]
SENTENCES = [p + a for p, a in PAIRS] + ["the cat sat on the mat", "where was the cat born ? Paris"]
CHAT = "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokenizer(chat: bool):
    """A word-level fast tokenizer fit on SENTENCES (the tokenizers library's own trainer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<assistant>"]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    raw.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")  # fmt: skip
    if chat:
        fast.chat_template = CHAT
    return fast


def _hf_model(arch: str, vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """<data_dir>/hf/<arch> (with a chat template) and <data_dir>/hf/<arch>-plain (without),
    written with save_pretrained."""
    root = tmp_path_factory.mktemp("hfdata")
    for arch in ARCHS:
        for chat in (True, False):
            tok = _tokenizer(chat)
            out = root / "hf" / (arch if chat else f"{arch}-plain")
            _hf_model(arch, len(tok)).save_pretrained(out)
            tok.save_pretrained(out)
    return root


def _load(data_dir, arch, **model):
    cfg = {"backend": "hf", "name_or_path": f"hf/{arch}", **model}
    return load_model_and_tokenizer(cfg, data_dir)


@pytest.mark.parametrize("arch", ARCHS)
def test_load_through_model_section(data_dir, arch):
    model, tok = _load(data_dir, arch, chat_template="none", prompt_suffix=" ?")
    assert isinstance(model, HFCausalLM) and isinstance(tok, HFTokenizer) and not model.training
    blocks = decoder_blocks(model)
    assert len(blocks) == 2 and blocks == (list(model.hf.transformer.h) if arch == "gpt2" else list(model.hf.model.layers))
    info = model_summary(model)
    assert info["n_layer"] == 2 and info["width"] == 32 and info["params"] == info["trainable_params"] > 0
    # no chat template: prompt + suffix, as text
    assert tok.encode_prompt("what is 1 plus 2") == tok.encode("what is 1 plus 2 ?")
    # the same directory given as an absolute path loads the same weights
    again, _ = load_model_and_tokenizer({"backend": "hf", "name_or_path": str(data_dir / "hf" / arch)})
    x = torch.tensor([tok.encode("the cat sat")])
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)


def test_chat_template_formats_prompts_and_keeps_checkers_working(data_dir):
    from trustlab.data.checkers import classify_qa

    _, tok = _load(data_dir, "llama")  # chat_template: auto, the tokenizer has one
    assert tok.chat_template
    ids = tok.encode_prompt("where was the cat born ?")
    assert ids == tok.encode("<user> where was the cat born ? <assistant>")
    full, mask = tok.encode_example("where was the cat born ?", " Paris")
    assert full[: len(ids)] == ids and full[-1] == tok.eos_id and sum(mask) == 2
    answer_text = tok.decode([t for t, m in zip(full, mask) if m])  # what generate would return
    assert classify_qa({"answer": "Paris", "attribute": "birth_city", "exists": True}, answer_text) == "correct"
    _, plain = _load(data_dir, "llama", chat_template="none")
    assert not plain.chat_template and plain.encode_prompt("the cat") == plain.encode("the cat")
    _, no_template = _load(data_dir, "llama-plain")  # auto without a template: plain prompts
    assert not no_template.chat_template
    with pytest.raises(ValueError, match="no chat template"):
        HFTokenizer(no_template.tok, chat_template=True)


@pytest.mark.parametrize("arch, targets", [("gpt2", ["c_attn"]), ("llama", ["q_proj", "v_proj"])])
def test_lora_noisefit_finetune(data_dir, arch, targets):
    """NoiseFiT (largest-SNR layer, hybrid loss) on a LoRA model: the noise hooks sit on the
    decoder layers, only the adapters train, the base weights do not move, the loss goes down."""
    from trustlab.noisefit.config import NoiseFitConfig
    from trustlab.noisefit.module import NoiseFitModule

    model, tok = _load(data_dir, arch, chat_template="none", lora={"enabled": True})  # target_modules: null
    assert model_summary(model)["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": targets}
    named = dict(model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n in trainable}
    assert wrapped == set(targets)
    base_before = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    lora_b_before = {n: p.detach().clone() for n, p in named.items() if "lora_B" in n}
    assert all(torch.count_nonzero(p) == 0 for p in lora_b_before.values())  # LoRA starts as the identity

    cfg = NoiseFitConfig.from_dict({"k": 1, "snr_draws": 2, "lr": 0.02, "warmup_steps": 1})
    module = NoiseFitModule(model, "noisefit_largest", cfg, pad_id=tok.pad_id,
                            snr_generator=torch.Generator().manual_seed(0))  # fmt: skip
    data = PairDataset(tok, PAIRS, 32)
    res = fit(module, data, tokenizer=tok, batch_size=10, max_steps=15, seed=0, threads=1, progress=False)
    blocks = decoder_blocks(model)
    (layer,) = module.selection_info()["selected_layers"]
    assert module.injector.blocks[layer] is blocks[layer] and module.injector.calls > 0
    losses = [r["ce"] for r in res.curve]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), f"base weight {n} changed"
    assert all(torch.count_nonzero(dict(model.named_parameters())[n]) > 0 for n in lora_b_before)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lora", [False, True])
def test_generation_statistics(data_dir, arch, lora):
    model, tok = _load(data_dir, arch, chat_template="none", lora={"enabled": lora})
    prompts = ["what is 1 plus 2 ?", "the cat", "what is 4 plus 4 ? 8 what is 3 plus 1 ?"]
    res = generate(model, tok, prompts, max_new_tokens=5, return_hidden_states="tokens", stop_at_eos=False)
    uncached = generate(model, tok, prompts, max_new_tokens=5, use_cache=False, stop_at_eos=False)
    assert res.token_ids == uncached.token_ids
    V = model.hf.config.vocab_size
    for i, p in enumerate(prompts):
        n = len(res.token_ids[i])
        assert n == 5 and res.hidden_states[i].shape == (3, n, 32)  # embeddings + 2 blocks
        assert np.all(res.token_logprobs[i] <= 0) and np.all(np.isfinite(res.token_logprobs[i]))
        assert np.all(res.entropies[i] >= -1e-9) and np.all(res.entropies[i] <= math.log(V) + 1e-9)
        with torch.no_grad():  # the first token's statistics, from the logits directly
            logits = model(torch.tensor([tok.encode_prompt(p)])).logits[0, -1].double()
        logp = torch.log_softmax(logits, -1)
        assert res.token_ids[i][0] == int(logits.argmax())
        assert res.token_logprobs[i][0] == pytest.approx(float(logp.max()), abs=1e-5)
        assert res.entropies[i][0] == pytest.approx(float(-(logp.exp() * logp).sum()), abs=1e-5)
    sc = score_continuations(model, tok, prompts, res.token_ids, return_hidden_states="tokens")
    for i in range(len(prompts)):
        np.testing.assert_allclose(sc.token_logprobs[i], res.token_logprobs[i], atol=1e-5)
        np.testing.assert_allclose(sc.hidden_states[i], res.hidden_states[i], atol=1e-4)
    pooled = generate(model, tok, prompts, max_new_tokens=5, return_hidden_states="mean", stop_at_eos=False)
    np.testing.assert_allclose(pooled.hidden_states[0], res.hidden_states[0].mean(axis=1), atol=1e-5)


def test_detection_statistics_on_hf_model(data_dir):
    """Generation statistics of a Llama-style model flow into the detection family's
    GenerationStats and its logit-based detectors (perplexity, mean token entropy)."""
    from trustlab.error_detection.estimators import build_estimator
    from trustlab.error_detection.statistics import GenerationStats

    model, tok = _load(data_dir, "llama", chat_template="none")
    prompts = [p for p, _ in PAIRS[:8]]
    g = generate(model, tok, prompts, max_new_tokens=4, return_hidden_states="mean")
    s = generate(model, tok, prompts, max_new_tokens=4, do_sample=True, num_return_sequences=2, seed=0)
    n, k = len(prompts), 2
    stats = GenerationStats(
        ids=[f"q{i}" for i in range(n)], task=["arithmetic"] * n, split=["fit", "test"] * (n // 2),
        response=g.texts, answer=g.texts, is_error=np.arange(n) % 3 == 0,
        token_logprobs=g.token_logprobs, token_entropies=g.entropies, token_entropy_vars=g.entropy_vars,
        answer_mask=[np.ones(len(t), bool) for t in g.token_ids],
        sample_texts=np.array(s.texts).reshape(n, k), sample_answers=np.array(s.texts).reshape(n, k),
        sample_token_logprobs=[s.token_logprobs[i * k : (i + 1) * k] for i in range(n)],
        hidden_answer=np.stack(g.hidden_states), hidden_response=np.stack(g.hidden_states),
    )  # fmt: skip
    ppl = build_estimator("perplexity", span="response").score(stats.without_labels())
    ent = build_estimator("mean_token_entropy", span="response").score(stats.without_labels())
    np.testing.assert_allclose(ppl, [-lp.mean() for lp in g.token_logprobs], atol=1e-9)
    np.testing.assert_allclose(ent, [h.mean() for h in g.entropies], atol=1e-9)
    assert stats.hidden_response.shape == (n, 3, 32)


def test_lora_adapters_save_and_reload(data_dir, tmp_path):
    model, tok = _load(data_dir, "gpt2", chat_template="none", lora={"enabled": True})
    with torch.no_grad():  # make the adapters non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    out = save_model_and_tokenizer(model, tok, tmp_path / "ft", metadata={"variant": "sft"})
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()  # adapters only
    again, tok2 = load_model_and_tokenizer({"backend": "hf", "name_or_path": str(out)})
    x = torch.tensor([tok.encode("what is 1 plus 2 ?")])
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits)
        base, _ = _load(data_dir, "gpt2")
        assert not torch.allclose(base(x).logits, model(x).logits, atol=1e-4)
    assert tok2.encode("the cat") == tok.encode("the cat")


def test_tiny_backend_and_model_errors(data_dir, tmp_path, monkeypatch):
    from trustlab.lm.checkpoint import save_model
    from trustlab.lm.gpt import GPT, GPTConfig
    from trustlab.lm.tokenizer import WordTokenizer

    wtok = WordTokenizer.fit(SENTENCES)
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=wtok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)),
               tmp_path / "models" / "base", wtok)  # fmt: skip
    model, tok = load_model_and_tokenizer(None, tmp_path)  # the defaults: backend tiny, models/base
    assert type(model) is GPT and isinstance(tok, WordTokenizer) and not model.training
    with pytest.raises(ConfigError, match="model.path = 'models/nope': no trustlab model"):
        load_model_and_tokenizer({"path": "models/nope"}, tmp_path)
    with pytest.raises(ConfigError, match=r"model.lora.target_modules = \['q_proj'\]: 'q_proj' not found.*c_attn"):
        _load(data_dir, "gpt2", lora={"enabled": True, "target_modules": ["q_proj"]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="'no-such-org/no-such-model' is not a local directory.*Downloads are off"):
        load_model_and_tokenizer({"backend": "hf", "name_or_path": "no-such-org/no-such-model"}, tmp_path)
    with pytest.raises(ConfigError, match="absolute path that does not exist"):
        load_model_and_tokenizer({"backend": "hf", "name_or_path": str(tmp_path / "missing")})


def test_the_families_study_the_model_of_the_model_section(data_dir):
    """NoiseFiT, the LM part of calibration and error detection take ``model.backend: hf``:
    each loads the transformers model (with LoRA) instead of the tiny checkpoint, and needs no
    tiny checkpoint for it; with the tiny default a missing checkpoint still names its stage."""
    from trustlab.calibration import lm as lmcal
    from trustlab.error_detection import run as dex
    from trustlab.error_detection.config import ErrorDetectionConfig
    from trustlab.lm.model_config import ModelConfig
    from trustlab.noisefit import run as nex
    from trustlab.noisefit.config import NoiseFitConfig

    cfg = ModelConfig.from_dict({"backend": "hf", "name_or_path": "hf/llama", "chat_template": "none",
                                 "lora": {"enabled": True}})  # fmt: skip
    model, tok, source = nex.load_base(NoiseFitConfig(), data_dir, model_cfg=cfg)
    assert isinstance(model, HFCausalLM) and source == "hf/llama"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert lmcal.require_lm(data_dir, None, cfg) == "hf/llama"
    lm_model, lm_tok = lmcal.load_lm(data_dir, None, cfg)
    records = [{"task": "context_copy", "id": f"c{i}", "prompt": f"what is {i} plus 1 ?", "answer": str(i + 1)}
               for i in range(3)]  # fmt: skip
    answers = lmcal.collect_answers(lm_model, lm_tok, records, max_new_tokens=3, batch_size=2)
    assert len(answers.responses) == 3 and answers.gold is not None and answers.logprob_gap < 1e-4
    dirs = dex.check_models(ErrorDetectionConfig.from_dict({"models": []}), data_dir, cfg)
    assert dirs == {"base": "hf/llama"}
    studied, _ = dex.load_studied_model(dirs, data_dir, cfg)
    assert isinstance(studied, HFCausalLM) and len(decoder_blocks(studied)) == 2
    with pytest.raises(FileNotFoundError, match="base_model"):
        nex.load_base(NoiseFitConfig(), data_dir, model_cfg=ModelConfig())
    with pytest.raises(FileNotFoundError, match="base_model"):
        dex.check_models(ErrorDetectionConfig.from_dict({"models": []}), data_dir, ModelConfig())
