"""The optional transformers backend, on tiny random models built in the test (no download)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trustlab.lm.generation import generate, score_continuations
from trustlab.lm.hf_backend import HFCausalLM, HFTokenizer, add_block_hook, decoder_blocks, input_embeddings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread is fastest, and robust on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_default_path_does_not_import_transformers():
    """Our modules (hf_backend included, until load_hf_model is called) never import transformers.
    (Lightning imports torchmetrics, which imports transformers when installed: not ours.)"""
    code = (
        "import sys; import trustlab.lm, trustlab.lm.generation, trustlab.lm.checkpoint, trustlab.lm.hooks, "
        "trustlab.lm.tokenizer, trustlab.lm.hf_backend; assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "lib")})
    for path in (ROOT / "lib/trustlab/lm").glob("*.py"):
        if path.name != "hf_backend.py":
            text = path.read_text()
            assert "import transformers" not in text and "from transformers" not in text, path


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "what", "is", "1", "2", "3", "?"]


@pytest.fixture(scope="module")
def hf_tok():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    return HFTokenizer(fast)


@pytest.fixture(scope="module")
def gpt2(hf_tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=hf_tok.vocab_size, n_positions=48, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=hf_tok.bos_id, eos_token_id=hf_tok.eos_id, attn_implementation="eager")  # fmt: skip
    return HFCausalLM(GPT2LMHeadModel(cfg)).eval()


PROMPTS = [[1, 4, 5, 6], [1, 12, 13, 14, 15, 16, 17], [1, 9]]


def test_tokenizer_adapter(hf_tok):
    ids = hf_tok.encode("the cat sat")
    assert ids == [4, 5, 6] and hf_tok.decode(ids) == "the cat sat"
    full, mask = hf_tok.encode_example("the cat", "sat")
    assert full[-1] == hf_tok.eos_id and mask[-2:] == [1, 1] and sum(mask) == 2
    assert hf_tok.pad_id == 0 and hf_tok.bos_id == 1


def test_blocks_hooks_and_hidden_states(gpt2):
    blocks = decoder_blocks(gpt2)
    assert blocks == list(gpt2.hf.transformer.h) and gpt2.blocks == blocks
    assert input_embeddings(gpt2) is gpt2.hf.transformer.wte
    x = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        base = gpt2(x, output_hidden_states=True, output_attentions=True)
        handle = add_block_hook(blocks[0], lambda h: h + 1.0)
        hooked = gpt2(x, output_hidden_states=True)
        handle.remove()
    assert len(base.hidden_states) == 3 and len(base.attentions) == 2
    assert base.attentions[0].shape == (1, 2, 7, 7)
    assert torch.allclose(hooked.hidden_states[1], base.hidden_states[1] + 1.0, atol=1e-6)
    assert not torch.allclose(hooked.logits, base.logits)


def test_generation_on_hf_model(gpt2, hf_tok):
    kw = dict(max_new_tokens=8, return_hidden_states="tokens", stop_at_eos=False)
    a = generate(gpt2, hf_tok, PROMPTS, **kw)
    b = generate(gpt2, hf_tok, PROMPTS, use_cache=False, **kw)
    assert a.token_ids == b.token_ids
    for i, p in enumerate(PROMPTS):
        one = generate(gpt2, hf_tok, [p], max_new_tokens=8, stop_at_eos=False)
        assert one.token_ids[0] == a.token_ids[i]
        np.testing.assert_allclose(one.token_logprobs[0], a.token_logprobs[i], atol=1e-5)
    sc = score_continuations(gpt2, hf_tok, PROMPTS, a.token_ids, return_hidden_states="tokens")
    for i in range(len(PROMPTS)):
        np.testing.assert_allclose(sc.token_logprobs[i], a.token_logprobs[i], atol=1e-5)
        np.testing.assert_allclose(sc.entropies[i], a.entropies[i], atol=1e-5)
        np.testing.assert_allclose(sc.hidden_states[i], a.hidden_states[i], atol=1e-4)
        # entropy of the raw distribution, directly
        with torch.no_grad():
            logits = gpt2(torch.tensor([PROMPTS[i] + a.token_ids[i]])).logits[0, len(PROMPTS[i]) - 1 : -1].double()
        logp = torch.log_softmax(logits, -1)
        np.testing.assert_allclose(a.entropies[i], -(logp.exp() * logp).sum(-1).numpy(), atol=1e-5)
    s1 = generate(gpt2, hf_tok, PROMPTS, max_new_tokens=6, do_sample=True, top_p=0.9, seed=1)
    s2 = generate(gpt2, hf_tok, PROMPTS, max_new_tokens=6, do_sample=True, top_p=0.9, seed=1)
    assert s1.token_ids == s2.token_ids


def test_llama_layers_and_peft(hf_tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=hf_tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=48,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    llama = HFCausalLM(LlamaForCausalLM(cfg)).eval()
    assert decoder_blocks(llama) == list(llama.hf.model.layers) and llama.context_length == 48
    a = generate(llama, hf_tok, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    b = generate(llama, hf_tok, PROMPTS, max_new_tokens=6, use_cache=False, stop_at_eos=False)
    assert a.token_ids == b.token_ids
    one = generate(llama, hf_tok, [PROMPTS[1]], max_new_tokens=6, stop_at_eos=False)
    assert one.token_ids[0] == a.token_ids[1]  # left padding + rotary positions

    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(llama.hf, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert decoder_blocks(lora) == list(llama.hf.model.layers)


def test_causal_lm_module_trains_hf_model(gpt2, hf_tok):
    import copy

    from trustlab.lm.training import CausalLMModule, ExampleDataset, fit

    model = copy.deepcopy(gpt2)
    items = [{"input_ids": p + [7, 8, hf_tok.eos_id], "loss_mask": [0] * len(p) + [1, 1, 1]} for p in PROMPTS] * 4
    res = fit(CausalLMModule(model, warmup_steps=1, lr=1e-2), ExampleDataset(items), tokenizer=hf_tok,
              batch_size=4, max_steps=6, threads=1, progress=False)  # fmt: skip
    assert res.steps == 6 and res.curve[-1]["loss"] < res.curve[0]["loss"]
