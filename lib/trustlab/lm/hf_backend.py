"""Optional backend: any ``transformers`` causal LM behind our interfaces.

Install with ``pip install .[hf]``. Nothing else in ``trustlab.lm`` imports this module or
``transformers``.

* ``load_hf_model(name_or_path, dtype=torch.float32, device="cpu") -> (HFCausalLM, HFTokenizer)``
  (a local directory or a hub name; no download happens for a local path).
* ``HFCausalLM(hf_model)``: an ``nn.Module`` whose ``forward`` takes our ``GPT.forward``
  keywords and returns a ``GPTOutput``, so ``generate``/``score_continuations`` work
  unchanged. ``.hf`` is the wrapped model, ``.blocks`` its decoder blocks, ``.wte`` its token
  embedding, ``.context_length`` its maximum positions.
* ``decoder_blocks(model)`` / ``input_embeddings(model)`` / ``add_block_hook`` (re-exported from
  ``trustlab.lm.hooks``): GPT-2's ``transformer.h``, Llama/Qwen/Mistral's ``model.layers``, also
  under a PEFT wrapper.
* ``HFTokenizer(hf_tokenizer)``: ``encode``/``decode``/``encode_prompt``/``encode_example``/
  ``encode_text`` and ``pad_id``/``bos_id``/``eos_id``/``sep_id``/``unk_id`` like ours.

``HFCausalLM`` records hidden states itself (block 0's input, then every block's output, after any
user hook), so they mean what ours mean: ``hidden_states[-1]`` is the last block's raw output,
without the final norm (unlike transformers' own ``output_hidden_states``). Attention
probabilities need ``attn_implementation="eager"``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from trustlab.lm.gpt import GPTOutput, configure_adamw
from trustlab.lm.hooks import add_block_hook, decoder_blocks, input_embeddings

__all__ = ["HFCausalLM", "HFTokenizer", "load_hf_model", "decoder_blocks", "input_embeddings", "add_block_hook"]


class HFCausalLM(nn.Module):
    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    @property
    def config(self):
        return self.hf.config

    @property
    def context_length(self) -> int | None:
        c = self.hf.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if getattr(c, key, None):
                return int(getattr(c, key))
        return None

    @property
    def blocks(self) -> list[nn.Module]:
        return decoder_blocks(self.hf)

    @property
    def wte(self) -> nn.Module:
        return input_embeddings(self.hf)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())

    def configure_optimizers(self, weight_decay=0.1, lr=3e-3, betas=(0.9, 0.95), no_decay_names=()):
        """AdamW grouped exactly like ``GPT.configure_optimizers`` (trainable parameters only, so
        a PEFT model trains its adapters): lets ``CausalLMModule`` train HF models too."""
        return configure_adamw(self, weight_decay, lr, betas, no_decay_names)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> GPTOutput:
        if position_ids is None and attention_mask is not None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        captured: list[torch.Tensor] = []
        handles = self._capture_hidden_states(captured) if output_hidden_states else []
        try:
            out = self.hf(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                output_attentions=output_attentions,
                return_dict=True,
            )
        finally:
            for h in handles:
                h.remove()
        return GPTOutput(
            logits=out.logits,
            hidden_states=tuple(captured) if output_hidden_states else None,
            attentions=tuple(out.attentions) if output_attentions else None,
            past_key_values=out.past_key_values if use_cache else None,
        )

    def _capture_hidden_states(self, captured: list) -> list:
        """Record block 0's input and every block's output with hooks registered last, so
        that the recorded states include any user hook's replacement (transformers' own
        ``output_hidden_states`` records before later hooks, and applies the final norm to
        the last entry)."""
        blocks = self.blocks

        def first_input(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])

        def output(module, args, out):
            captured.append(out if isinstance(out, torch.Tensor) else out[0])

        handles = [blocks[0].register_forward_pre_hook(first_input, with_kwargs=True)]
        return handles + [b.register_forward_hook(output) for b in blocks]


class HFTokenizer:
    """Our tokenizer interface over a ``transformers`` tokenizer. ``encode`` adds no special
    tokens; ``encode_prompt`` adds what the tokenizer adds by default (e.g. Llama's BOS) and,
    if given, ``prompt_suffix`` (a separator string such as ``"\\nAnswer:"``)."""

    def __init__(self, tokenizer, prompt_suffix: str = ""):
        self.tok = tokenizer
        self.prompt_suffix = prompt_suffix
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token  # common practice for decoder-only models

    vocab_size = property(lambda self: len(self.tok))
    pad_id = property(lambda self: self.tok.pad_token_id)
    bos_id = property(lambda self: self.tok.bos_token_id)
    eos_id = property(lambda self: self.tok.eos_token_id)
    sep_id = property(lambda self: getattr(self.tok, "sep_token_id", None))
    unk_id = property(lambda self: self.tok.unk_token_id)

    @property
    def special_ids(self) -> set[int]:
        return set(self.tok.all_special_ids)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = list(self.tok(prompt + self.prompt_suffix, add_special_tokens=True)["input_ids"])
        if not ids and self.bos_id is not None:
            ids = [self.bos_id]
        return ids

    def encode_example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        p = self.encode_prompt(prompt)
        a = self.encode(answer) + ([self.eos_id] if self.eos_id is not None else [])
        return p + a, [0] * len(p) + [1] * len(a)

    def encode_text(self, text: str) -> tuple[list[int], list[int]]:
        ids = list(self.tok(text, add_special_tokens=True)["input_ids"])
        if self.eos_id is not None:
            ids.append(self.eos_id)
        return ids, [0] + [1] * (len(ids) - 1)


def load_hf_model(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    attn_implementation: str | None = None,
    prompt_suffix: str = "",
    **kwargs,
) -> tuple[HFCausalLM, HFTokenizer]:
    """Load a causal LM and its tokenizer (eval mode). ``attn_implementation="eager"`` is
    needed for ``output_attentions``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = dict(kwargs)
    if attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **extra).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return HFCausalLM(model).eval(), HFTokenizer(tokenizer, prompt_suffix=prompt_suffix)
