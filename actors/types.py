"""Records that cross between actors through the Ray object store. Frozen: nobody edits in flight."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    """One training prompt, tokenized on the driver (the learner needs the same ids)."""

    uid: int  # row index in the dataset
    token_ids: list[int]  # (P,) prompt ids, chat template applied
    answer: str  # ground truth handed to the reward function (a dict or list ground truth as JSON)
    text: str = ""  # the question as the data gave it (before template and instruction)
    # What rewards in other trainers' shapes read (rewards.shapes); not part of a prompt's identity:
    question: str | list = field(default="", compare=False)  # the prompt as the data had it: text or chat messages
    label: object = field(default=None, compare=False)  # a dict or list ground truth as the data had it (None: answer)
    fields: dict = field(default_factory=dict, compare=False)  # the row's other columns (data_source, extra_info, ...)


@dataclass(frozen=True)
class Turn:
    """One model turn of a multi-turn trajectory and what the environment answered."""

    text: str  # what the model wrote in this turn (decoded for reading; its ids are the trained ones)
    output: str = ""  # the environment's text appended after it ("" = none)
    tool: str = ""  # the tool call's status: ok | error | timeout | output_limit | env_error; "" = no call
    end: str = ""  # on the last turn, why the trajectory ended: done | max_turns | budget | env_error


@dataclass(frozen=True)
class RolloutBatch:
    """G responses for each of a batch of prompts, grouped: rows g*G .. g*G+G-1 share prompt g."""

    prompts: list[Prompt]  # (B,)
    group_size: int  # G
    response_ids: list[list[int]]  # (B*G, ragged) sampled token ids
    behaviour_logp: list[list[float]]  # (B*G, ragged) log-prob of each sampled token
    response_text: list[str]  # (B*G,) decoded responses, for the reward functions
    finished: list[bool]  # (B*G,) ended with EOS/stop rather than the length limit
    policy_version: int  # learner version whose weights produced every response here
    generate_s: float  # seconds the engine spent on this batch
    actor_instance: str = ""  # the generation actor's incarnation: a new one after Ray restarted it
    # Multi-turn only (None for single-turn, where every response token is the model's):
    model_mask: list[list[bool]] | None = None  # (B*G, ragged) True where the policy sampled the token;
    #   False on environment tokens, whose behaviour_logp entries are 0.0 placeholders that nothing reads
    turns: list[tuple[Turn, ...]] | None = None  # (B*G, ragged) each trajectory's turns, in order

    def __len__(self) -> int:
        return len(self.response_ids)

    def transcript(self, i: int) -> str:
        """Response i as it read: multi-turn, each model turn followed by the environment's answer."""
        if self.turns is None:
            return self.response_text[i]
        return "".join(t.text + t.output for t in self.turns[i])


@dataclass(frozen=True)
class EvalBatch:
    """`samples` responses for each of a batch of held-out prompts: rows n*samples .. share prompt n."""

    prompts: list[Prompt]  # (B,)
    samples: int
    response_text: list[str]  # (B*samples,) what the model wrote (multi-turn: its turns joined)
    policy_version: int  # learner version whose weights wrote them
    tool_calls: tuple[int, ...] = ()  # (B*samples,) tool calls per response (multi-turn; () for single-turn)
