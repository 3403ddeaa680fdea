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

    def summary(self, payload_bytes: int = 0) -> "RolloutSummary":
        """What the driver decides with; the ids, log-probs and texts stay in the object store."""
        trajectories = None if self.turns is None else tuple(
            TrajectoryStats(len(t), tuple(turn.tool for turn in t if turn.tool), t[-1].end if t else "", sum(m), len(m))
            for t, m in zip(self.turns, self.model_mask))
        return RolloutSummary(self.group_size, [len(r) for r in self.response_ids], list(self.finished),
                              self.policy_version, self.generate_s, self.actor_instance,
                              self.transcript(0)[:PREVIEW_CHARS] if len(self) else "", payload_bytes, trajectories)


PREVIEW_CHARS = 600  # the console's sample line shows this much of one response


@dataclass(frozen=True)
class TrajectoryStats:
    """One multi-turn trajectory in numbers (the env/* metrics), without its tokens or text."""

    turns: int
    tool_calls: tuple[str, ...]  # each call's status: ok | error | timeout | output_limit | env_error
    end: str  # why it ended: done | max_turns | budget | env_error
    model_tokens: int  # tokens the policy sampled
    tokens: int  # every response token, the environment's included


@dataclass(frozen=True)
class RolloutSummary:
    """A RolloutBatch as the driver sees it: per-response numbers whose size does not grow with
    response length. The batch itself (ids, log-probs, texts) goes from the generator through the
    object store to the reward actors, the learner ranks and the rollout record, never through
    the driver."""

    group_size: int  # G
    lengths: list[int]  # (B*G,) response tokens (multi-turn: the environment's included)
    finished: list[bool]  # (B*G,) ended with EOS/stop rather than the length limit
    policy_version: int
    generate_s: float
    actor_instance: str
    preview: str  # the first response, cut at PREVIEW_CHARS: the console's sample line
    payload_bytes: int  # the RolloutBatch's pickled size: what a driver that fetched it would receive
    trajectories: tuple[TrajectoryStats, ...] | None = None  # (B*G,) multi-turn only


@dataclass(frozen=True)
class EvalBatch:
    """`samples` responses for each of a batch of held-out prompts: rows n*samples .. share prompt n."""

    prompts: list[Prompt]  # (B,)
    samples: int
    response_text: list[str]  # (B*samples,) what the model wrote (multi-turn: its turns joined)
    policy_version: int  # learner version whose weights wrote them
    tool_calls: tuple[int, ...] = ()  # (B*samples,) tool calls per response (multi-turn; () for single-turn)

    def summary(self) -> "EvalSummary":
        return EvalSummary(self.policy_version, self.tool_calls)


@dataclass(frozen=True)
class EvalSummary:
    """An EvalBatch as the driver sees it: no text. The texts go by reference to the reward actors."""

    policy_version: int
    tool_calls: tuple[int, ...] = ()  # (B*samples,) as in EvalBatch
