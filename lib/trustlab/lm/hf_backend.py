"""Optional backend: any ``transformers`` causal LM behind our interfaces.

Install with ``pip install .[hf]``. Nothing else in ``trustlab.lm`` imports this module or
``transformers``.

* ``load_hf_model(name_or_path, dtype=torch.float32, device="cpu", local_files_only=...,
  chat_template=...) -> (HFCausalLM, HFTokenizer)`` (a local directory or a hub name; no
  download happens for a local path or with ``local_files_only``); ``save_hf_model``.
  ``trustlab.lm.loading.load_model_and_tokenizer`` does this from the ``model:`` params section,
  LoRA adapters (peft) included.
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

__all__ = [
    "HFCausalLM", "HFTokenizer", "load_hf_model", "save_hf_model", "decoder_blocks", "input_embeddings", "add_block_hook"
]


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
    if given, ``prompt_suffix`` (a separator string such as ``"\\nAnswer:"``).

    ``chat_template=True`` wraps every prompt as one user turn of the tokenizer's chat template
    with the assistant's turn opened (``apply_chat_template(..., add_generation_prompt=True)``):
    ``encode_prompt`` returns those ids (no ``prompt_suffix``), so ``generate`` continues inside
    the assistant's turn and ``encode_example`` trains the answer there, followed by the eos
    (for chat models the end-of-turn token). The decoded answer is the same plain text our answer
    checkers read. ``"auto"``: only when the tokenizer has a template."""

    def __init__(self, tokenizer, prompt_suffix: str = "", chat_template: bool | str = False):
        self.tok = tokenizer
        self.prompt_suffix = prompt_suffix
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "auto":
            chat_template = has_template
        elif chat_template == "none":
            chat_template = False
        if chat_template and not has_template:
            raise ValueError("chat_template=True but the tokenizer has no chat template (use 'auto' or False)")
        self.chat_template = bool(chat_template)
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

    def encode_answer(self, answer: str) -> list[int]:
        """An answer's tokens as they follow the prompt (subword tokenizers carry spacing)."""
        return self.encode(answer)

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def encode_prompt(self, prompt: str) -> list[int]:
        if self.chat_template:
            out = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            ids = out["input_ids"] if hasattr(out, "keys") else out  # a BatchEncoding in transformers >= 5
            return [int(i) for i in ids]
        ids = list(self.tok(prompt + self.prompt_suffix, add_special_tokens=True)["input_ids"])
        if not ids and self.bos_id is not None:
            ids = [self.bos_id]
        return ids

    def encode_example(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        p = self.encode_prompt(prompt)
        a = self.encode_answer(answer) + ([self.eos_id] if self.eos_id is not None else [])
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
    chat_template: bool | str = False,
    local_files_only: bool = False,
    trust_remote_code: bool = False,
    **kwargs,
) -> tuple[HFCausalLM, HFTokenizer]:
    """Load a causal LM and its tokenizer (eval mode). ``attn_implementation="eager"`` is
    needed for ``output_attentions``; ``local_files_only`` never downloads (a hub name must be in
    the Hugging Face cache); ``chat_template``: see ``HFTokenizer``. A directory written by
    ``save_hf_model`` with LoRA adapters (``adapter_config.json``) loads its base model first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = dict(kwargs)
    if attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    hub = dict(local_files_only=local_files_only, trust_remote_code=trust_remote_code)
    if local_files_only:  # transformers 5 looks for a hub adapter_config.json without this flag
        extra.setdefault("adapter_kwargs", {"local_files_only": True})
    adapter = _adapter_config(name_or_path)
    base = adapter["base_model_name_or_path"] if adapter else name_or_path
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **hub, **extra)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, name_or_path, is_trainable=False)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
    return HFCausalLM(model).eval(), HFTokenizer(tokenizer, prompt_suffix=prompt_suffix, chat_template=chat_template)


def _adapter_config(name_or_path: str) -> dict | None:
    import json
    from pathlib import Path

    path = Path(name_or_path) / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save_hf_model(model: HFCausalLM, directory, tokenizer: HFTokenizer | None = None) -> None:
    """``save_pretrained`` of the wrapped model (a PEFT model saves its adapters only, with the
    base model's name or path) and of the tokenizer; ``load_hf_model(directory)`` reads it back."""
    model.hf.save_pretrained(str(directory))
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tok.save_pretrained(str(directory))
    elif tokenizer is not None:  # one of our tokenizers driving an HF model (tests, custom vocabularies)
        tokenizer.save(directory)
