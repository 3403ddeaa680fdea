"""Multi-turn rollouts: the model writes, the environment answers, until it is done.

Token in, token out. A trajectory's ids are the ids vLLM sampled for each model turn, followed by
each observation's ids, tokenised once when it is appended; the next turn is sampled from exactly
those ids (`TokensPrompt`). Nothing the model wrote is decoded and encoded again, so the trained
tokens are the sampled ones and each behaviour log-prob belongs to its token.

Turns are batched: every live trajectory's next turn is one `generate` call, then every tool call
of that round runs at once on a thread pool (each in its own sandbox process, bounded by its own
time limit), so one slow tool costs its round at most env.tool_timeout_s and never stalls the batch.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from actors.types import Turn
from envs.base import EnvSpecError, Observation

logger = logging.getLogger(__name__)

OBS = "\x00observation\x00"


@dataclass(frozen=True)
class Sampled:
    """One model turn as the engine returned it."""

    ids: list[int]  # (t,) sampled ids
    logp: list[float]  # (t,) their log-probs under the sampling distribution
    text: str
    eos: bool  # ended with the end-of-sequence token (not at a stop string or its token limit)
    cut: bool = False  # ended at its token limit (the turn's or the budget's), not by itself


@dataclass
class Trajectory:
    """A trajectory being built: ids after the prompt, with whose each token is."""

    env: object
    prompt_ids: list[int]
    budget: int  # tokens after the prompt, model's and environment's together
    ids: list[int] = field(default_factory=list)  # (T,)
    logp: list[float] = field(default_factory=list)  # (T,) 0.0 on environment tokens
    model: list[bool] = field(default_factory=list)  # (T,) True where the model sampled the token
    turns: list[Turn] = field(default_factory=list)
    end: str = ""  # "" while live; done | max_turns | budget | env_error
    cut: bool = False  # the last model turn ended at its token limit

    @property
    def finished(self) -> bool:
        """The response ended by itself, as a single-turn one that stops at EOS or a stop string:
        its last tokens are the model's (no observation cut at the budget after them) and that turn
        was not cut at a token limit. A turn cut mid-prose at env.max_turn_tokens that the
        environment takes as the answer is not finished: it counts as truncated, and the format
        reward does not pay it."""
        return bool(self.model) and self.model[-1] and not self.cut

    def context(self) -> list[int]:
        return self.prompt_ids + self.ids

    def remaining(self) -> int:
        return self.budget - len(self.ids)

    def add_model(self, s: Sampled) -> None:
        if len(s.logp) != len(s.ids):
            raise ValueError(f"{len(s.ids)} sampled ids but {len(s.logp)} log-probs")
        self.ids += s.ids
        self.logp += s.logp
        self.model += [True] * len(s.ids)
        self.cut = s.cut
        self.turns.append(Turn(s.text))

    def add_observation(self, ids: list[int], obs: Observation) -> None:
        keep = ids[: self.remaining()]
        self.ids += keep
        self.logp += [0.0] * len(keep)
        self.model += [False] * len(keep)
        last = self.turns[-1]
        self.turns[-1] = Turn(last.text, obs.text, obs.tool)
        if len(keep) < len(ids) or self.remaining() == 0:
            self.finish("budget")

    def finish(self, why: str) -> None:
        self.end = why
        last = self.turns[-1]
        self.turns[-1] = Turn(last.text, last.output, last.tool, why)

    @property
    def model_text(self) -> str:
        """What the reward reads: the model's turns joined (never the environment's text)."""
        return "".join(t.text for t in self.turns)


class ObservationEncoder:
    """Observation text -> ids, tokenised once. After a turn the model ended with EOS (its end of
    message), a chat model gets the observation as the next user message of its chat template,
    followed by a new assistant header; otherwise the text is appended as is (mid-message)."""

    def __init__(self, tokenizer, chat_template: bool):
        self.tokenizer = tokenizer
        self.wrap: tuple[list[int], list[int]] = ([], [])  # the template's ids before and after the text
        if chat_template:
            self.wrap = tuple(tokenizer.encode(w, add_special_tokens=False) if w else [] for w in chat_wrap(tokenizer))

    def __call__(self, text: str, after_eos: bool) -> list[int]:
        # The observation is untrusted text (a tool prints what the model's code tells it to): its
        # `<|im_end|>` must stay characters, not become the EOS or a forged turn of the template.
        # Only the wrap, which the template wrote, is read for special tokens.
        ids = self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        return self.wrap[0] + ids + self.wrap[1] if after_eos else ids


def chat_wrap(tokenizer) -> tuple[str, str]:
    """(before, after) the observation text: what the chat template puts between the model's
    end-of-message token and the next assistant turn, around a user message."""
    eos = tokenizer.eos_token
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    head = tokenizer.apply_chat_template(msgs, tokenize=False)
    full = tokenizer.apply_chat_template(msgs + [{"role": "user", "content": OBS}], tokenize=False,
                                         add_generation_prompt=True)
    cut = head.rfind(eos) + len(eos) if eos and eos in head else -1
    if cut < 0 or not full.startswith(head[:cut]) or full.count(OBS) != 1:
        raise EnvSpecError("env.name: this tokenizer's chat template does not end a message with its EOS token or "
                           "does not extend a conversation by appending; set model.chat_template=false for multi-turn")
    before, after = full[cut:].split(OBS)
    return before, after


def run_episodes(sample, encode, trajectories: list[Trajectory], max_turns: int, pool: ThreadPoolExecutor,
                 stop: tuple[str, ...], max_turn_tokens: int = 0) -> list[Trajectory]:
    """Drive every trajectory to its end. `sample(contexts, max_tokens, stop)` is one batched
    engine call returning one Sampled per context; `encode(text, after_eos)` tokenises an
    observation; a turn is at most `max_turn_tokens` long (0: the budget left)."""
    live = list(trajectories)
    while live:
        limits = [min(t.remaining(), max_turn_tokens or t.remaining()) for t in live]
        outs = sample([t.context() for t in live], limits, stop)
        asking = []
        for t, s in zip(live, outs, strict=True):
            t.add_model(s)
            if t.remaining() <= 0:
                t.finish("budget")
            elif len(t.turns) >= max_turns:
                t.finish("max_turns")
            else:
                asking.append((t, s))
        for (t, s), obs in zip(asking, pool.map(_ask, asking)):
            if isinstance(obs, Exception):
                t.turns[-1] = Turn(t.turns[-1].text, "", "env_error")
                t.finish("env_error")
            elif obs is None:
                t.finish("done")
            elif obs.text:
                t.add_observation(encode(obs.text, s.eos), obs)
        live = [t for t in live if not t.end]
    return trajectories


def _ask(item) -> Observation | None | Exception:
    t, s = item
    try:
        return t.env.step(s.text, s.eos)
    except Exception as e:  # a user environment's bug ends its own trajectory, never the batch
        logger.warning("env step raised %s: %s (the trajectory ends; status env_error)", type(e).__name__, e)
        return e
