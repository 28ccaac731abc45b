"""The lean CPU decoder (src/utils/lean_decoder.py) against transformers itself.

In the model's own dtype it must reproduce ``generate()`` token for token; with int8 weights it must stay close
(the same next token almost everywhere). Architectures not on the embedded model (Qwen2's q/k/v biases, an untied
output layer, other head counts) are checked on tiny random models built from a config, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LogitsProcessorList, Qwen2Config

from src.errors import ModelLoadError
from src.settings import DTYPE_INT8, reload_settings
from src.utils.catalog import resolve_local_model
from src.utils.lean_decoder import LeanDecoder, lean_decoder_unsupported
from src.utils.LocalLLMEngine import LocalLLMEngine, wants_int8_weights

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


class _Collect:
    def __init__(self) -> None:
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value: Any) -> None:
        self.puts.append([int(i) for i in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.ended = True


@pytest.fixture(scope="module")
def embedded() -> Iterator[tuple[Any, Any, torch.Tensor]]:
    folder = resolve_local_model("smollm2-135m")[1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    yield model, tokenizer, ids["input_ids"]


def _greedy(decoder: LeanDecoder, prompt: torch.Tensor, tokens: int, streamer: Any = None, **kw: Any) -> list[int]:
    return decoder.generate(
        prompt[0].tolist(), max_new_tokens=tokens, processors=LogitsProcessorList(), do_sample=False,
        eos_ids=set(), streamer=streamer or _Collect(), should_stop=kw.get("should_stop", lambda: False),
    )


def test_in_the_models_dtype_it_replies_exactly_as_generate(embedded: Any) -> None:
    model, _, prompt = embedded
    with torch.inference_mode():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                                  min_new_tokens=24, do_sample=False)[0, prompt.shape[1]:].tolist()
    streamer = _Collect()
    assert _greedy(LeanDecoder(model, int8=False), prompt, 24, streamer) == expected
    # The streamer sees what generate() shows it: the prompt first, then one token at a time, then the end.
    assert streamer.puts[0] == prompt[0].tolist() and streamer.puts[1:] == [[t] for t in expected]
    assert streamer.ended


def test_int8_weights_keep_the_next_token_almost_everywhere(embedded: Any) -> None:
    model, _, prompt = embedded
    with torch.inference_mode():
        sequence = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40,
                                  min_new_tokens=40, do_sample=False)
        reference = model(sequence).logits[0].float()
    decoder = LeanDecoder(model, int8=True)
    decoder.start(sequence.shape[1])
    start = prompt.shape[1]
    with torch.inference_mode():
        logits = [decoder.forward(prompt[0], 0)]
        logits += [decoder.forward(sequence[0, i : i + 1], i) for i in range(start, sequence.shape[1] - 1)]
    ours = torch.stack(logits)
    wanted = reference[start - 1 : sequence.shape[1] - 1]
    agreement = (ours.argmax(-1) == wanted.argmax(-1)).float().mean().item()
    assert agreement >= 0.9, f"int8 picks the bf16 model's next token only {agreement:.0%} of the time"
    assert (ours - wanted).abs().max().item() < 3.0
    assert decoder.int8 and decoder._layers[0].qkv.weight.dtype == torch.int8


def test_it_stops_on_end_of_sequence_and_when_asked(embedded: Any) -> None:
    model, _, prompt = embedded
    decoder = LeanDecoder(model, int8=False)
    first_three = _greedy(decoder, prompt, 3)
    assert len(first_three) == 3
    stops = iter([False, False, True])
    assert _greedy(decoder, prompt, 20, should_stop=lambda: next(stops)) == first_three
    ended = decoder.generate(prompt[0].tolist(), max_new_tokens=20, processors=LogitsProcessorList(), do_sample=False,
                             eos_ids={first_three[1]}, streamer=_Collect(), should_stop=lambda: False)
    assert ended == first_three[:2]


def _tiny(config: Any) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True), id="qwen2"),
        pytest.param(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                 num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
                                 rope_theta=500.0), id="llama-untied-mha"),
    ],
)
def test_other_llama_family_shapes_match_transformers(config: Any) -> None:
    model = _tiny(config)
    if config.model_type == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None  # the bias path is really exercised
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    prompt = torch.tensor([[5, 17, 42, 99, 7, 250]])
    with torch.inference_mode():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                                  min_new_tokens=10, do_sample=False, pad_token_id=0)[0, prompt.shape[1]:].tolist()
    assert _greedy(LeanDecoder(model, int8=False), prompt, 10) == expected


def test_what_it_does_not_take_is_named() -> None:
    gpt2 = AutoModelForCausalLM.from_config(__import__("transformers").GPT2Config(n_layer=1, n_embd=32, n_head=2))
    assert "gpt2" in (lean_decoder_unsupported(gpt2) or "")
    windowed = _tiny(Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True,
                                 sliding_window=16))
    assert "sliding" in (lean_decoder_unsupported(windowed) or "")
    with pytest.raises(ValueError, match="sliding"):
        LeanDecoder(windowed, int8=False)


def test_int8_is_the_cpu_default_and_refused_elsewhere() -> None:
    assert wants_int8_weights("cpu", None) and wants_int8_weights("cpu", DTYPE_INT8)
    assert not wants_int8_weights("cpu", "bfloat16") and not wants_int8_weights("cuda", None)
    with pytest.raises(ModelLoadError, match="CPU only"):
        wants_int8_weights("cuda", DTYPE_INT8)


def test_the_engine_takes_the_lean_decoder_and_the_settings_choose_how(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = LocalLLMEngine(backend="transformers")
    assert engine.load_model().dtype == DTYPE_INT8
    backend = engine._backend
    assert backend.lean is not None and backend.lean.int8
    assert backend.model.model.layers[0].mlp.down_proj.weight is None, "the bf16 copies must be freed"
    reply = engine.generate(PROMPT, temperature=0.8, seed=11, max_new_tokens=8)
    assert reply == engine.generate(PROMPT, temperature=0.8, seed=11, max_new_tokens=8), "a seed repeats a reply"
    engine.unload_model()

    monkeypatch.setenv("HEARTH_DTYPE", "bfloat16")
    reload_settings()
    engine = LocalLLMEngine(backend="transformers")
    assert engine.load_model().dtype == "bfloat16"
    assert engine._backend.lean is not None and not engine._backend.lean.int8
    engine.unload_model()

    monkeypatch.setenv("HEARTH_LEAN_DECODER", "0")
    reload_settings()
    engine = LocalLLMEngine(backend="transformers")
    engine.load_model()
    assert engine._backend.lean is None
    assert engine._backend.model.model.layers[0].mlp.down_proj.weight is not None
    assert engine.generate(PROMPT, temperature=0, max_new_tokens=3)
    engine.unload_model()


def test_loads_and_replies_of_every_engine_run_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two torch thread pools in one process (a load on the caller's thread, replies on the worker) made OpenMP stop
    # spinning and cost ~40% of decode speed: all torch work of all engines must happen on one thread.
    import threading

    from src.utils import LocalLLMEngine as engine_module

    threads: list[tuple[str, int]] = []
    real_init, real_generate = engine_module.TransformersBackend.__init__, engine_module.TransformersBackend.generate

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        threads.append(("load", threading.get_ident()))
        real_init(self, *args, **kwargs)

    def generate(self: Any, *args: Any, **kwargs: Any) -> None:
        threads.append(("generate", threading.get_ident()))
        real_generate(self, *args, **kwargs)

    monkeypatch.setattr(engine_module.TransformersBackend, "__init__", init)
    monkeypatch.setattr(engine_module.TransformersBackend, "generate", generate)
    first, second = LocalLLMEngine(backend="transformers"), LocalLLMEngine(backend="transformers")
    first.load_model()
    assert first.generate(PROMPT, temperature=0, max_new_tokens=2)
    assert second.generate(PROMPT, temperature=0, max_new_tokens=2)  # loads on first use, inside stream()
    assert first.run_on_engine_thread(threading.get_ident) == threads[0][1]
    first.unload_model()
    second.unload_model()
    assert [kind for kind, _ in threads] == ["load", "generate", "load", "generate"]
    assert len({ident for _, ident in threads}) == 1
    assert threads[0][1] != threading.get_ident()
