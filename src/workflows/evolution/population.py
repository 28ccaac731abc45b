"""N agents sharing ONE base language model, each with its own LoRA adapter (peft), deciding and learning online.

Decisions
    An agent's prompt is its observation text ending in ``Action:``; each valid action is scored by its log-probability
    as a continuation (`` north``). All agents are scored in one batched forward pass with a different adapter per row
    (peft's ``adapter_names=``). Rows are left-padded with explicit position ids, and only the last few positions go
    through the language-model head (``logits_to_keep``), so the 49k-word head costs one row per agent, not one per
    token. A row is the prompt plus an action's tokens except its last one; actions that share that prefix share the
    row, so when every action is a single token (the usual case: north, south, ..., checked once per vocabulary) there
    is exactly one row per agent and its next-token distribution gives every action's log-probability at once. Longer
    actions (``pick up``) add a row per distinct prefix; the result is exact either way.

    Sampling is over the row's VALID actions only: softmax(logprob / temperature), argmax at temperature 0, so an agent
    always gets a valid action. One uniform draw per row is taken from the caller's generator, in row order, at every
    temperature (also 0), so the batched and the one-at-a-time paths consume the same draws and agree.

Training
    ``train_step`` takes one Adam step on one adapter with loss = mean(-log P(action | observation) x advantage). Only
    that adapter's parameters have ``requires_grad`` during the step and its optimizer holds only them (no weight decay
    anywhere), the base model is frozen, so every other adapter and the base stay bit-identical. The model stays in
    eval mode (LoRA dropout is 0) so that peft's per-row adapter routing is usable for training too, which means the
    active adapter is never switched: deciding and training never disturb each other's state.

Initialisation
    peft initialises ``lora_B`` to zero, which would make every agent start as the base model and identical to the
    others. Each adapter is instead initialised from its own seeded generator: ``lora_A`` uniform as peft does
    (kaiming, bound 1/sqrt(fan_in)) and ``lora_B`` ~ N(0, init_std), so agents start different but close to the base.

Precision
    float32 by default. On this 2-core CPU (AVX-512 with bf16) a bf16 base is no faster for the short batched prompts
    used here and its rounding makes batched and one-at-a-time log-probs differ by ~1e-2 instead of ~1e-6; adapters
    and optimizer state are float32 in both modes (peft upcasts adapters). See ``dtype``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from src.errors import (
    AdapterStateMismatchError,
    ExportedAdapterError,
    InvalidParameterError,
    UnknownAdapterError,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "v_proj")
DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0
DEFAULT_INIT_STD = 0.02
ADAPTER_PREFIX = "agent_"
PROMPT_END = "Action:"
EXPORT_METADATA = "hearth_agent.json"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _return_freed_memory() -> None:
    """Give the backward pass's freed activations back to the OS.

    glibc keeps freed heap pages mapped: after one training pass of 20 agents the process stayed ~900 MB larger (1955
    vs 1052 MB measured) although torch had freed everything. ``malloc_trim`` returns them; it is a no-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc: nothing to do
        pass


def build_prompt(observation: str, actions: Sequence[str] = ()) -> str:
    """The text an agent's action continues: a one-line menu of the actions, then the observation, ending in
    ``Action:`` (appended if missing).

    Why the menu: on the bare observation the embedded model puts ~95% of its probability on "rest" whatever it sees,
    so agents almost never move, never meet a reward, and learning has no signal. Listing the moves (12 tokens)
    brings "rest" down to ~30-60% and lets the observation's arrows matter; a longer instruction did a little better
    but cost twice the tokens on every decision."""
    text = observation.rstrip()
    text = text if text.endswith(PROMPT_END) else f"{text} {PROMPT_END}"
    return f"Moves: {' '.join(actions)}\n{text}" if actions else text


def parse_action(text: str, valid_actions: Sequence[str]) -> str | None:
    """The valid action that ``text`` starts with (case-insensitive, leading spaces/punctuation ignored), else None."""
    cleaned = text.lstrip(" \t\n\"'`*:-.>").lower()
    for action in sorted(valid_actions, key=len, reverse=True):  # "pick up" before "pick"
        wanted = action.lower()
        if cleaned.startswith(wanted) and (len(cleaned) == len(wanted) or not cleaned[len(wanted)].isalnum()):
            return action
    return None


@dataclass(frozen=True)
class Decision:
    """One agent's choice. ``logprobs`` are log P(action | prompt) under its adapter (over the whole vocabulary),
    ``probabilities`` the distribution it was sampled from (over its valid actions, at the given temperature)."""

    action: str
    logprobs: dict[str, float]
    probabilities: dict[str, float]


class TrainItem(Protocol):
    observation: str
    action: str
    advantage: float


@dataclass(frozen=True)
class TrainSample:
    observation: str
    action: str
    advantage: float


@dataclass(frozen=True)
class TrainReport:
    adapter_name: str
    batch_size: int
    loss_before: float
    loss_after: float | None
    seconds: float  # the update itself (forward, backward, step); excludes the optional loss_after pass


@dataclass
class _Adapter:
    params: dict[str, torch.nn.Parameter] = field(default_factory=dict)  # name-independent key -> parameter
    optimizer: torch.optim.Adam | None = None


def _samples(batch: Sequence[TrainItem | tuple[str, str, float]]) -> list[TrainSample]:
    out = []
    for item in batch:
        if isinstance(item, tuple):
            observation, action, advantage = item
        else:
            observation, action, advantage = item.observation, item.action, item.advantage
        out.append(TrainSample(str(observation), str(action), float(advantage)))
    return out


class LoRAPopulation:
    """One base model loaded once, with ``num_agents`` named LoRA adapters (``agent_0`` ...) on it.

    ``actions`` is the action vocabulary (used to check the single-token fast path once, and by free-text parsing);
    any valid-action list passed to ``decide`` may use other strings too. ``layers`` limits the adapters to some
    transformer layers (all by default); adapting only the top layers makes training cheaper because backward stops
    at the lowest adapted layer. All methods run on the caller's thread and are serialised by an internal lock.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        num_agents: int = 20,
        actions: Sequence[str] = (),
        *,
        rank: int = DEFAULT_RANK,
        alpha: float = DEFAULT_ALPHA,
        target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
        layers: Sequence[int] | None = None,
        init_std: float = DEFAULT_INIT_STD,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        if num_agents < 1:
            raise InvalidParameterError(f"A population needs at least one agent, not {num_agents}.")
        if rank < 1:
            raise InvalidParameterError(f"The LoRA rank must be at least 1, not {rank}.")
        if init_std < 0:
            raise InvalidParameterError(f"The adapter init noise must not be negative ({init_std}).")
        from peft import LoraConfig, get_peft_model

        self.rank, self.alpha, self.init_std, self.seed = rank, float(alpha), float(init_std), seed
        self.target_modules = tuple(target_modules)
        self._load_base(model, dtype)
        names = [f"{ADAPTER_PREFIX}{i}" for i in range(num_agents)]
        config = LoraConfig(
            r=rank,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            layers_to_transform=list(layers) if layers is not None else None,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):  # peft's own init draws from the global RNG; keep the caller's
            try:
                peft_model = get_peft_model(self._base, config, adapter_name=names[0])
                for name in names[1:]:
                    peft_model.add_adapter(name, config)
            except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
                raise InvalidParameterError(f"Cannot put LoRA adapters on {self.model_id}: {exc}") from exc
        self._finish(peft_model, names, actions)
        for index, name in enumerate(names):
            self._seeded_init(name, index)

    # --- construction ------------------------------------------------------------------------------------------

    def _load_base(self, model: str, dtype: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from src.utils.catalog import resolve_local_model
        from src.utils.cpu import use_compute_threads_in_torch

        if dtype not in _DTYPES:
            raise InvalidParameterError(f"Unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
        started = time.perf_counter()
        self.model_ref = model
        self.model_id, self.model_folder = resolve_local_model(model)
        self.dtype = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_folder)
        use_compute_threads_in_torch()
        base = AutoModelForCausalLM.from_pretrained(self.model_folder, dtype=_DTYPES[dtype]).eval()
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self._base = base
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        logger.info("Loaded base model %s (%s) in %.1f s", self.model_id, dtype, time.perf_counter() - started)

    def _finish(self, peft_model: Any, names: list[str], actions: Sequence[str]) -> None:
        self.model = peft_model.eval()
        self.adapter_names: list[str] = list(names)
        self.actions: tuple[str, ...] = tuple(actions)
        self._lock = threading.RLock()
        self._token_cache: dict[str, tuple[int, ...]] = {}
        self._adapters: dict[str, _Adapter] = {name: _Adapter() for name in names}
        for full_name, parameter in self.model.named_parameters():
            parts = full_name.split(".")
            for i in range(1, len(parts)):
                if parts[i] in self._adapters and parts[i - 1].startswith("lora_"):
                    if parameter.dtype != torch.float32:  # adapters train in float32 whatever the base
                        parameter.data = parameter.data.float()
                    parameter.requires_grad_(False)  # only the adapter being trained gets gradients
                    self._adapters[parts[i]].params[".".join(parts[:i] + parts[i + 1 :])] = parameter
                    break
            else:
                parameter.requires_grad_(False)
        for name in names:
            adapter = self._adapters[name]
            if not adapter.params:
                raise InvalidParameterError(f"Adapter {name!r} has no LoRA weights on {self.model_id}.")
            adapter.params = dict(sorted(adapter.params.items()))
        self.single_token_actions = all(len(self._action_ids(a)) == 1 for a in self.actions)
        logger.info(
            "%d LoRA adapter(s) on %s (rank %d, %s), %.2f MB each; actions %s",
            len(names),
            self.model_id,
            self.rank,
            ",".join(self.target_modules),
            self.adapter_nbytes() / 1e6,
            "all single-token (one row per agent)" if self.single_token_actions else "include multi-token ones",
        )

    def _seeded_init(self, name: str, index: int) -> None:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + index) % (2**63))
        with torch.no_grad():
            for key, parameter in self._adapters[name].params.items():
                if ".lora_A." in f".{key}.":
                    bound = 1.0 / math.sqrt(parameter.shape[1])
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) * (2 * bound) - bound)
                elif ".lora_B." in f".{key}.":
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * self.init_std)

    @classmethod
    def from_exported(
        cls, folder: str | Path, *, model: str | None = None, adapter_name: str = "agent_0", dtype: str | None = None
    ) -> LoRAPopulation:
        """A one-agent population from an ``export_adapter`` folder, loaded with ``PeftModel.from_pretrained``."""
        from peft import PeftConfig, PeftModel

        folder = Path(folder)
        try:
            peft_config = PeftConfig.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ExportedAdapterError(str(folder), str(exc)) from exc
        meta: dict[str, Any] = {}
        if (folder / EXPORT_METADATA).is_file():
            meta = json.loads((folder / EXPORT_METADATA).read_text(encoding="utf-8"))
        self = cls.__new__(cls)
        self.rank = int(peft_config.r)
        self.alpha = float(peft_config.lora_alpha)
        self.init_std, self.seed = float(meta.get("init_std", 0.0)), int(meta.get("seed", 0))
        self.target_modules = tuple(sorted(peft_config.target_modules))
        self._load_base(model or meta.get("model") or peft_config.base_model_name_or_path, dtype or meta.get("dtype", "float32"))
        with torch.random.fork_rng(devices=[]):
            peft_model = PeftModel.from_pretrained(self._base, str(folder), adapter_name=adapter_name)
        self._finish(peft_model, [adapter_name], meta.get("actions", ()))
        return self

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def _check(self, name: str) -> _Adapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise UnknownAdapterError(name, self.adapter_names) from None

    def adapter_nbytes(self, name: str | None = None) -> int:
        """Bytes of one adapter's weights (all adapters have the same size)."""
        adapter = self._check(name or self.adapter_names[0])
        return sum(p.numel() * p.element_size() for p in adapter.params.values())

    def optimizer_nbytes(self, name: str) -> int:
        """Bytes of the optimizer state kept for an adapter (0 before its first training step)."""
        optimizer = self._check(name).optimizer
        if optimizer is None:
            return 0
        return sum(
            v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        )

    def get_adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """A copy of an adapter's weights; keys do not contain the adapter name, so states move between agents."""
        with self._lock:
            return {key: p.detach().clone() for key, p in self._check(name).params.items()}

    def set_adapter_state(self, name: str, state: dict[str, torch.Tensor], *, reset_optimizer: bool = True) -> None:
        """Overwrite an adapter's weights (and, by default, forget its optimizer state, now stale)."""
        with self._lock:
            adapter = self._check(name)
            if set(state) != set(adapter.params):
                missing, extra = sorted(set(adapter.params) - set(state)), sorted(set(state) - set(adapter.params))
                raise AdapterStateMismatchError(name, f"missing {missing[:3]}, unexpected {extra[:3]}")
            for key, parameter in adapter.params.items():
                if tuple(state[key].shape) != tuple(parameter.shape):
                    raise AdapterStateMismatchError(
                        name, f"{key} has shape {tuple(state[key].shape)}, expected {tuple(parameter.shape)}"
                    )
            with torch.no_grad():
                for key, parameter in adapter.params.items():
                    parameter.copy_(state[key])
            if reset_optimizer:
                adapter.optimizer = None

    def reset_optimizer(self, name: str) -> None:
        with self._lock:
            self._check(name).optimizer = None

    def get_optimizer_state(self, name: str) -> dict[str, Any] | None:
        """A copy of the adapter's Adam state (None before its first step), for checkpoints."""
        import copy

        with self._lock:
            optimizer = self._check(name).optimizer
            return None if optimizer is None else copy.deepcopy(optimizer.state_dict())

    def set_optimizer_state(self, name: str, state: dict[str, Any] | None) -> None:
        with self._lock:
            adapter = self._check(name)
            adapter.optimizer = None
            if state is not None:
                self._optimizer(adapter, lr=1e-4).load_state_dict(state)

    @staticmethod
    def _optimizer(adapter: _Adapter, lr: float) -> torch.optim.Adam:
        if adapter.optimizer is None:
            adapter.optimizer = torch.optim.Adam(list(adapter.params.values()), lr=lr, weight_decay=0.0)
        for group in adapter.optimizer.param_groups:
            group["lr"] = lr
        return adapter.optimizer

    # --- scoring -----------------------------------------------------------------------------------------------

    def _action_ids(self, action: str) -> tuple[int, ...]:
        ids = self._token_cache.get(action)
        if ids is None:
            ids = tuple(self.tokenizer(" " + action, add_special_tokens=False)["input_ids"])
            if not ids:
                raise InvalidParameterError(f"The action {action!r} has no tokens.")
            self._token_cache[action] = ids
        return ids

    def _prompt_ids(self, observation: str) -> list[int]:
        return list(self.tokenizer(build_prompt(observation, self.actions))["input_ids"])

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every row ends at the last column
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids, mask, positions

    def _last_logprobs(self, rows: list[list[int]], names: list[str], keep: int) -> torch.Tensor:
        """log-softmax over the vocabulary at each row's last ``keep`` positions: [rows, keep, vocab], float32."""
        input_ids, mask, positions = self._padded(rows)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            adapter_names=names,
            logits_to_keep=keep,
            use_cache=False,
        )
        return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)

    def _score(self, prompts: list[list[int]], names: list[str], actions: list[list[str]]) -> list[torch.Tensor]:
        """log P(action | prompt) for each row's actions, in one forward pass; one 1-D tensor per row."""
        rows: list[list[int]] = []
        row_names: list[str] = []
        where: dict[tuple[int, tuple[int, ...]], int] = {}
        plan: list[list[tuple[int, tuple[int, ...]]]] = []
        for i, (prompt, name, valid) in enumerate(zip(prompts, names, actions, strict=True)):
            entries = []
            for action in valid:
                ids = self._action_ids(action)
                key = (i, ids[:-1])
                if key not in where:
                    where[key] = len(rows)
                    rows.append(prompt + list(ids[:-1]))
                    row_names.append(name)
                entries.append((where[key], ids))
            plan.append(entries)
        keep = max(len(ids) for entries in plan for _, ids in entries)
        logprobs = self._last_logprobs(rows, row_names, keep)
        results = []
        for entries in plan:
            values = []
            for row, ids in entries:
                start = keep - len(ids)
                token_positions = torch.arange(start, keep)
                values.append(logprobs[row, token_positions, torch.tensor(ids)].sum())
            results.append(torch.stack(values))
        return results

    @staticmethod
    def _pick(logprobs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
        draw = float(torch.rand((), generator=generator, dtype=torch.float64))  # one draw per row, always
        values = logprobs.double()
        if temperature <= 0:
            probabilities = torch.zeros_like(values)
            index = int(torch.argmax(values))
            probabilities[index] = 1.0
            return index, probabilities
        probabilities = torch.softmax(values / temperature, dim=0)
        cumulative = torch.cumsum(probabilities, dim=0)
        index = int(torch.searchsorted(cumulative, torch.tensor([draw * float(cumulative[-1])], dtype=torch.float64)))
        return min(index, len(values) - 1), probabilities

    def _validate(self, observations: Sequence[str], names: Sequence[str], valid_actions: Sequence[Sequence[str]]) -> None:
        if not (len(observations) == len(names) == len(valid_actions)):
            raise InvalidParameterError(
                f"decide needs one adapter name and one valid-action list per observation "
                f"({len(observations)} observations, {len(names)} names, {len(valid_actions)} action lists)."
            )
        for name, valid in zip(names, valid_actions, strict=True):
            self._check(name)
            if not valid:
                raise InvalidParameterError(f"Agent {name!r} was given no valid action to choose from.")
            if len(set(valid)) != len(valid):
                raise InvalidParameterError(f"Agent {name!r} was given duplicate actions: {list(valid)}.")

    def _decisions(
        self, scores: list[torch.Tensor], valid_actions: Sequence[Sequence[str]], temperature: float, generator: torch.Generator | None
    ) -> list[Decision]:
        decisions = []
        for logprobs, valid in zip(scores, valid_actions, strict=True):
            index, probabilities = self._pick(logprobs, temperature, generator)
            decisions.append(
                Decision(
                    action=valid[index],
                    logprobs={a: float(v) for a, v in zip(valid, logprobs.tolist(), strict=True)},
                    probabilities={a: float(p) for a, p in zip(valid, probabilities.tolist(), strict=True)},
                )
            )
        return decisions

    def decide(
        self,
        observations: Sequence[str],
        adapter_names: Sequence[str],
        valid_actions: Sequence[Sequence[str]],
        temperature: float,
        generator: torch.Generator | None,
    ) -> list[Decision]:
        """Every row's decision from ONE forward pass, each row through its own adapter."""
        if not observations:
            return []
        self._validate(observations, adapter_names, valid_actions)
        with self._lock, torch.inference_mode():
            prompts = [self._prompt_ids(o) for o in observations]
            scores = self._score(prompts, list(adapter_names), [list(v) for v in valid_actions])
            return self._decisions(scores, valid_actions, temperature, generator)

    def decide_sequential(
        self,
        observations: Sequence[str],
        adapter_names: Sequence[str],
        valid_actions: Sequence[Sequence[str]],
        temperature: float,
        generator: torch.Generator | None,
    ) -> list[Decision]:
        """The same decisions as ``decide``, one agent (one forward pass) at a time: the reference it is checked
        against, and the baseline of the benchmark."""
        self._validate(observations, adapter_names, valid_actions)
        with self._lock, torch.inference_mode():
            scores = [
                self._score([self._prompt_ids(o)], [n], [list(v)])[0]
                for o, n, v in zip(observations, adapter_names, valid_actions, strict=True)
            ]
            return self._decisions(scores, valid_actions, temperature, generator)

    def decide_free_text(
        self,
        observations: Sequence[str],
        adapter_names: Sequence[str],
        max_tokens: int,
        temperature: float,
        generator: torch.Generator | None,
        valid_actions: Sequence[Sequence[str]] | None = None,
    ) -> list[str | None]:
        """Let each agent write up to ``max_tokens`` tokens (batched, its own adapter per row) and parse the first
        action from the text; None where the text starts with no valid action (the caller counts those as invalid).
        Without ``valid_actions`` the population's action vocabulary is used."""
        if not observations:
            return []
        if max_tokens < 1:
            raise InvalidParameterError(f"max_tokens must be at least 1, not {max_tokens}.")
        valid = [list(v) for v in valid_actions] if valid_actions is not None else [list(self.actions)] * len(observations)
        self._validate(observations, adapter_names, valid)
        names = list(adapter_names)
        eos = self.tokenizer.eos_token_id
        with self._lock, torch.inference_mode():
            input_ids, mask, positions = self._padded([self._prompt_ids(o) for o in observations])
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, adapter_names=names,
                use_cache=True, logits_to_keep=1,
            )
            generated: list[list[int]] = [[] for _ in observations]
            done = [False] * len(observations)
            next_position = positions[:, -1] + 1
            for step in range(max_tokens):
                logits = out.logits[:, -1].float()
                tokens = []
                for row in range(len(observations)):  # per-row draws in row order, as in decide
                    if temperature <= 0:
                        token = int(torch.argmax(logits[row]))
                    else:
                        probabilities = torch.softmax(logits[row] / temperature, dim=-1)
                        token = int(torch.multinomial(probabilities, 1, generator=generator))
                    tokens.append(token)
                    if not done[row]:
                        if token == eos:
                            done[row] = True
                        else:
                            generated[row].append(token)
                            done[row] = "\n" in self.tokenizer.decode(generated[row]).lstrip()
                if all(done) or step == max_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones((len(observations), 1), dtype=mask.dtype)], dim=1)
                out = self.model(
                    input_ids=torch.tensor(tokens, dtype=torch.long)[:, None],
                    attention_mask=mask,
                    position_ids=next_position[:, None],
                    past_key_values=out.past_key_values,
                    adapter_names=names,
                    use_cache=True,
                )
                next_position = next_position + 1
        texts = [self.tokenizer.decode(g).lstrip().split("\n", 1)[0] for g in generated]
        return [parse_action(text, v) for text, v in zip(texts, valid, strict=True)]

    # --- training ----------------------------------------------------------------------------------------------

    def _losses(self, batches: dict[str, list[TrainSample]]) -> dict[str, torch.Tensor]:
        """Each adapter's loss on its own batch, all from one forward pass (rows never mix, so adapter i's loss
        depends only on adapter i's weights and its gradient reaches only them)."""
        rows: list[list[int]] = []
        names: list[str] = []
        targets: list[tuple[int, ...]] = []
        keep = 1
        for name, samples in batches.items():
            for sample in samples:
                ids = self._action_ids(sample.action)
                rows.append(self._prompt_ids(sample.observation) + list(ids[:-1]))
                names.append(name)
                targets.append(ids)
                keep = max(keep, len(ids))
        logprobs = self._last_logprobs(rows, names, keep)
        losses: dict[str, torch.Tensor] = {}
        row = 0
        for name, samples in batches.items():
            terms = []
            for sample in samples:
                ids = targets[row]
                action_logprob = logprobs[row, torch.arange(keep - len(ids), keep), torch.tensor(ids)].sum()
                terms.append(-action_logprob * sample.advantage)
                row += 1
            losses[name] = torch.stack(terms).mean()
        return losses

    def _checked_batches(self, batches: dict[str, Sequence[TrainItem | tuple[str, str, float]]]) -> dict[str, list[TrainSample]]:
        checked = {}
        for name, batch in batches.items():
            self._check(name)
            samples = _samples(batch)
            if not samples:
                raise InvalidParameterError(f"The training batch of {name!r} is empty.")
            checked[name] = samples
        return checked

    def batch_loss(self, adapter_name: str, batch: Sequence[TrainItem | tuple[str, str, float]]) -> float:
        """The training loss of ``batch`` for an adapter, without changing anything."""
        samples = self._checked_batches({adapter_name: batch})
        with self._lock, torch.inference_mode():
            return float(self._losses(samples)[adapter_name])

    def train_step(
        self,
        adapter_name: str,
        batch: Sequence[TrainItem | tuple[str, str, float]],
        lr: float,
        *,
        compute_loss_after: bool = False,
    ) -> TrainReport:
        """One Adam step on ``adapter_name`` only, loss = mean(-log P(action | observation) x advantage)."""
        return self.train_steps({adapter_name: batch}, lr, compute_loss_after=compute_loss_after)[0]

    def train_steps(
        self,
        batches: dict[str, Sequence[TrainItem | tuple[str, str, float]]],
        lr: float,
        *,
        compute_loss_after: bool = False,
        rows_per_pass: int = 16,
    ) -> list[TrainReport]:
        """One Adam step for each named adapter on its own batch, several adapters per forward/backward pass.

        The same update as calling ``train_step`` for each adapter (up to float rounding of the batch shape): a pass's
        loss is the sum of its adapters' mean losses, and an adapter's gradient only comes from its own rows. Adapters
        are grouped into passes of at most ``rows_per_pass`` rows (one adapter's batch is never split): backward keeps
        every row's activations, about 10 MB per row on the 135M model, so one pass for 20 agents x 4 would hold ~1 GB.
        Adapters not named are left bit-identical. ``seconds`` is each pass's time divided among its adapters."""
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise InvalidParameterError(f"The learning rate must be a positive number, not {lr}.")
        samples = self._checked_batches(batches)
        groups: list[dict[str, list[TrainSample]]] = []
        for name, batch in samples.items():
            if not groups or sum(map(len, groups[-1].values())) + len(batch) > max(rows_per_pass, 1):
                groups.append({})
            groups[-1][name] = batch
        reports: list[TrainReport] = []
        with self._lock:
            for adapter in self._adapters.values():  # peft's disable_adapter() & co. re-enable the active adapter
                for parameter in adapter.params.values():
                    parameter.requires_grad_(False)
            for group in groups:
                reports += self._train_group(group, lr, compute_loss_after)
            _return_freed_memory()
        return reports

    def _train_group(self, samples: dict[str, list[TrainSample]], lr: float, compute_loss_after: bool) -> list[TrainReport]:
        started = time.perf_counter()
        optimizers = [self._optimizer(self._adapters[name], lr) for name in samples]
        parameters = [p for name in samples for p in self._adapters[name].params.values()]
        with torch.enable_grad():
            for parameter in parameters:
                parameter.requires_grad_(True)
            try:
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                losses = self._losses(samples)
                torch.stack(list(losses.values())).sum().backward()
                for optimizer in optimizers:
                    optimizer.step()
            finally:
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                for parameter in parameters:
                    parameter.requires_grad_(False)
        seconds = (time.perf_counter() - started) / len(samples)
        after: dict[str, float] = {}
        if compute_loss_after:
            with torch.inference_mode():
                after = {name: float(loss) for name, loss in self._losses(samples).items()}
        return [
            TrainReport(name, len(samples[name]), float(losses[name].detach()), after.get(name), seconds)
            for name in samples
        ]

    # --- export ------------------------------------------------------------------------------------------------

    def export_adapter(self, adapter_name: str, folder: str | Path) -> Path:
        """Save one adapter with peft's ``save_pretrained`` into ``folder`` (replaced atomically), loadable with
        ``PeftModel.from_pretrained(base, folder)`` or ``LoRAPopulation.from_exported(folder)``."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._check(adapter_name)
            work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.exporting-", dir=folder.parent))
            try:
                self.model.save_pretrained(str(work), selected_adapters=[adapter_name])
                produced = work / adapter_name if (work / adapter_name).is_dir() else work
                meta = {
                    "model": self.model_ref,
                    "model_id": self.model_id,
                    "dtype": self.dtype,
                    "actions": list(self.actions),
                    "adapter_name": adapter_name,
                    "prompt_end": PROMPT_END,
                    "init_std": self.init_std,
                    "seed": self.seed,
                }
                with open(produced / EXPORT_METADATA, "w", encoding="utf-8") as handle:
                    json.dump(meta, handle, indent=2)
                    handle.flush()
                    os.fsync(handle.fileno())
                old = None
                if folder.exists():
                    old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}"
                    folder.rename(old)
                produced.rename(folder)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        logger.info("Exported adapter %s to %s", adapter_name, folder)
        return folder


def load_exported(folder: str | Path, *, model: str | None = None, dtype: str | None = None) -> LoRAPopulation:
    """A one-agent decider (adapter ``agent_0``) from an exported adapter folder."""
    return LoRAPopulation.from_exported(folder, model=model, dtype=dtype)
