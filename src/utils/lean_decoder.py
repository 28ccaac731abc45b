"""A lean CPU decoder for Llama-family models (Llama, Qwen2, Mistral without sliding window): the transformers
model's own weights, run without transformers' per-token machinery.

Why: on a laptop CPU a small model's decode step is not limited by arithmetic but by (1) matrix-vector products over
bf16 weights, which oneDNN runs at a few GB/s for these skinny shapes, and (2) Python overhead: about 210 linear calls
and 1,500 other small ops per token through transformers' modules, cache objects and ``generate()``'s bookkeeping.
Measured with SmolLM2-135M on the 2-core CI machine (``benchmarks/chat_speed.py``): ``generate()`` decodes ~20
tokens/s, this decoder ~2.5x that (int8) and ~1.3x (bf16).

What it changes, and only that:

* weights: int8 weight-only by default on the CPU (symmetric, one scale per output row, through torch's
  ``_weight_int8pack_mm``): the scheme of gpt-fast's int8 and close to llama.cpp's Q8_0 (one scale per 32 weights),
  half the bytes of bf16; activations stay in the model's dtype. ``HEARTH_DTYPE=bfloat16`` keeps the weights as they
  are (the decoder still fuses them);
* q/k/v and gate/up projections fused into one product each; a KV cache allocated once per reply;
* rotary tables computed by the model's own rotary module, so every rope scaling transformers knows is honoured.

What it keeps: the tokenizer, the chat template, and sampling through transformers' own logits processors in
``generate()``'s order (repetition penalty, temperature, top-k, top-p), seeded from torch's global generator as
``generate()`` is, so every knob means the same on both paths. Other architectures, GPUs and LoRA stay on
``generate()`` (``lean_decoder_unsupported`` says why a model is not taken).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})


class Streamer(Protocol):
    def put(self, value: Any) -> None: ...

    def end(self) -> None: ...


def int8_weight_only_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def lean_decoder_unsupported(model: Any) -> str | None:
    """Why ``model`` cannot run on the lean decoder, or None when it can."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"architecture {model_type!r} (the lean decoder knows {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "mlp_bias", False):
        return "biases in the MLP"
    if getattr(config, "use_sliding_window", False) or (model_type == "mistral" and getattr(config, "sliding_window", None)):
        return "sliding-window attention"
    if getattr(model, "peft_config", None):
        return "LoRA adapters"
    if next(model.parameters()).device.type != "cpu":
        return "not on the CPU"
    return None


class _Projection:
    """One linear layer, or several fused along their outputs (q/k/v, gate/up), int8 weight-only or as loaded."""

    def __init__(self, linears: Sequence[torch.nn.Linear], *, int8: bool) -> None:
        weight = torch.cat([linear.weight.detach() for linear in linears], dim=0)
        dtype = weight.dtype
        if any(linear.bias is not None for linear in linears):
            self.bias: torch.Tensor | None = torch.cat([
                linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features, dtype=dtype)
                for linear in linears
            ])
        else:
            self.bias = None
        self.scales: torch.Tensor | None = None
        if int8:
            wide = weight.float()
            scales = wide.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.weight = (wide / scales[:, None]).round_().clamp_(-127, 127).to(torch.int8).contiguous()
            self.scales = scales.to(dtype)
        else:
            self.weight = weight.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales is not None:
            y = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)
        else:
            y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: _Projection
    out: _Projection
    post_norm: torch.Tensor
    gate_up: _Projection
    down: _Projection


class LeanDecoder:
    """Prefill and decode for one Llama-family model; one reply at a time (the engine's worker guarantees it)."""

    def __init__(self, model: Any, *, int8: bool) -> None:
        reason = lean_decoder_unsupported(model)
        if reason is not None:
            raise ValueError(f"The lean decoder cannot run this model: {reason}.")
        config = model.config
        inner = model.model
        self.dtype = next(model.parameters()).dtype
        self.int8 = int8
        # int8: float32 KV cache and attention, since torch's CPU attention is 2-7x slower in bf16 for one query row
        # (173 vs 25 us at 300 positions) and these tensors are small next to the weights. Otherwise the model's
        # dtype, which keeps this decoder's output identical to generate()'s, token for token (tested).
        self._attention_dtype = torch.float32 if int8 else self.dtype
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.vocab_size = int(config.vocab_size)
        self._embed_parameter = inner.embed_tokens.weight
        self._embed = self._embed_parameter.detach()
        self._rotary = inner.rotary_emb
        self._final_norm = inner.norm.weight.detach()
        self._copied: list[torch.nn.Linear] = []  # the model's layers this decoder holds its own copy of

        def project(*linears: torch.nn.Linear) -> _Projection:
            self._copied.extend(linears)
            return _Projection(linears, int8=int8)

        self._lm_head = project(model.lm_head)
        self._layers = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self._layers.append(_Layer(
                input_norm=layer.input_layernorm.weight.detach(),
                qkv=project(attention.q_proj, attention.k_proj, attention.v_proj),
                out=project(attention.o_proj),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=project(mlp.gate_proj, mlp.up_proj),
                down=project(mlp.down_proj),
            ))
        self._split_qkv = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        self._intermediate = int(config.intermediate_size)
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._cos = self._sin = torch.empty(0)

    def release_copied_weights(self) -> None:
        """Drop the model's own weights of every layer this decoder copied (fused, maybe int8): they would only take
        memory. Embeddings (which a tied output layer shares), norms and the config stay with the model."""
        for linear in self._copied:
            if linear.weight is not self._embed_parameter:
                linear.weight = None
        self._copied = []

    # --- the forward pass -----------------------------------------------------------------------------------------

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # As transformers' LlamaRMSNorm: normalised in float32, then scaled in the model's dtype (written out:
        # torch's fused rms_norm takes twice as long on a single row).
        wide = x.float()
        return weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def start(self, length: int) -> None:
        """Make room for a reply of at most ``length`` positions (prompt included)."""
        shape = (1, self.kv_heads, length, self.head_dim)
        self._keys = [torch.empty(shape, dtype=self._attention_dtype) for _ in self._layers]
        self._values = [torch.empty(shape, dtype=self._attention_dtype) for _ in self._layers]
        positions = torch.arange(length).unsqueeze(0)
        probe = torch.empty(1, dtype=self.dtype)
        cos, sin = self._rotary(probe, positions)
        self._cos, self._sin = cos[0].to(self.dtype), sin[0].to(self.dtype)

    def forward(self, token_ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits (float32, shape [vocab]) of the token after ``token_ids``, which sit at positions ``start``...
        A prompt goes in whole at ``start=0`` (causal attention over itself); after that one token at a time."""
        count = int(token_ids.shape[-1])
        if count > 1 and start != 0:
            raise ValueError("Several tokens at once only from position 0.")
        end = start + count
        cos, sin = self._cos[start:end], self._sin[start:end]
        hidden = self._embed[token_ids.reshape(-1)]
        for index, layer in enumerate(self._layers):
            q, k, v = layer.qkv(self._rms(hidden, layer.input_norm)).split(self._split_qkv, dim=-1)
            q = self._rope(q.view(count, self.heads, self.head_dim).transpose(0, 1), cos, sin)
            k = self._rope(k.view(count, self.kv_heads, self.head_dim).transpose(0, 1), cos, sin)
            keys, values = self._keys[index], self._values[index]
            keys[0, :, start:end] = k
            values[0, :, start:end] = v.view(count, self.kv_heads, self.head_dim).transpose(0, 1)
            attended = F.scaled_dot_product_attention(
                q.unsqueeze(0).to(self._attention_dtype), keys[:, :, :end], values[:, :, :end],
                is_causal=count > 1, enable_gqa=True,
            )
            hidden = hidden + layer.out(attended[0].transpose(0, 1).reshape(count, -1).to(self.dtype))
            gate, up = layer.gate_up(self._rms(hidden, layer.post_norm)).split(self._intermediate, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        last = self._rms(hidden[-1:], self._final_norm)
        return self._lm_head(last)[0, : self.vocab_size].float()

    # --- a whole reply --------------------------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        processors: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        do_sample: bool,
        eos_ids: set[int],
        streamer: Streamer,
        should_stop: Callable[[], bool],
    ) -> list[int]:
        """Generate up to ``max_new_tokens`` after ``prompt_ids``, handing each token to ``streamer`` (which first
        gets the prompt, as with ``generate()``); stops after end-of-sequence or the token during which
        ``should_stop()`` became true. Returns the new token ids."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        streamer.put(ids)
        new: list[int] = []
        self.start(ids.shape[1] + max_new_tokens)
        try:
            with torch.inference_mode():
                logits = self.forward(ids[0], 0)
                for _ in range(max_new_tokens):
                    scores = processors(ids, logits.unsqueeze(0))
                    if do_sample:
                        token = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1)[0]
                    else:
                        token = torch.argmax(scores, dim=-1)
                    ids = torch.cat((ids, token.view(1, 1)), dim=1)
                    token_id = int(token)
                    new.append(token_id)
                    streamer.put(token.view(1))
                    if token_id in eos_ids or should_stop() or len(new) == max_new_tokens:
                        break
                    logits = self.forward(token.view(1), ids.shape[1] - 1)
        finally:
            self._keys, self._values = [], []  # the cache is per reply: give its memory back now
            streamer.end()
        return new
