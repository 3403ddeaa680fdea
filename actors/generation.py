"""Generation worker: one vLLM engine that samples G responses per prompt and takes new weights.

A plain class; `launch/` wraps it with `ray.remote`. Ray runs an actor's calls one at a time in
submission order, so a `load_weights` queued behind `generate` calls applies after them: that
ordering is what bounds staleness in the driver.
"""
from __future__ import annotations

import logging
import pickle
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from actors.episodes import ObservationEncoder, Sampled, Trajectory, run_episodes
from actors.types import EvalBatch, EvalSummary, Prompt, RolloutBatch, RolloutSummary
from envs.base import ToolLimits
from envs.registry import load_env
from learner.weights import WeightShard, assemble_weights, load_base_weights, merge_lora

logger = logging.getLogger(__name__)


def _repack_tied_lm_head(worker) -> None:
    """Runs in vLLM's worker. With tied embeddings the checkpoint has no lm_head entry, so the
    in-place reload never re-processes lm_head; on CPU that layer keeps a packed copy of the old
    embedding matrix (oneDNN/SGL GEMM handle) and would sample from stale logits. Repack it."""
    model = worker.model_runner.model
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and getattr(model.config, "tie_word_embeddings", False) and hasattr(lm_head, "quant_method"):
        lm_head.quant_method.process_weights_after_loading(lm_head)


def sampled_logprobs(out) -> list[float]:
    """(T,) the log-prob of the token sampled at each position of a vLLM completion: with
    logprobs=0, vLLM returns exactly that token's entry at each step."""
    return [step[tok].logprob for step, tok in zip(out.logprobs, out.token_ids)]


class GenerationWorker:
    def __init__(self, cfg, model_path: str, seed: int, env_cfg=None, chat_template: bool = True):
        """cfg: the generation config; env_cfg: the env config (None or env.name=single_turn: one
        response per sample, as before multi-turn existed)."""
        import torch
        from vllm import LLM

        self.cfg, self.env_cfg, self.model_path = cfg, env_cfg, model_path
        self._base = None  # the base weights LoRA adapters are merged into, read at the first adapter load
        dtype = cfg.dtype
        if dtype == "auto":  # float32 ran faster than bf16 on the CPU backend
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            enforce_eager=not torch.cuda.is_available(),
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            # Behaviour log-probs must be those of the distribution actually sampled (after
            # temperature), since the learner's importance ratio is taken against them.
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            # single-GPU mode: the learner uses this GPU while the engine sleeps
            enable_sleep_mode=cfg.sleep_mode,
        )
        self.env_cls = load_env(env_cfg.name) if env_cfg is not None else None
        if self.env_cls is not None:
            self.encode = ObservationEncoder(self.llm.get_tokenizer(), chat_template)
            self.tool_pool = ThreadPoolExecutor(max_workers=env_cfg.tool_workers)
            self.limits = ToolLimits(env_cfg.tool_timeout_s, env_cfg.max_output_chars, env_cfg.tool_memory_mb,
                                     env_cfg.isolation)
        self.version = 0
        # A restarted actor that received the latest weights before it sampled loses no batch,
        # but the driver must still count the restart: a new id per incarnation tells it.
        self.instance = uuid.uuid4().hex

    def generate(self, prompts: list[Prompt], seed: int | None = None) -> RolloutBatch:
        """G samples per prompt. With `seed`, sampling restarts from it: the engine runs in this
        process and draws from torch's global generator (this vLLM build refuses per-request
        seeds), so the same prompts, weights and seed give the same responses, on a restarted
        actor or a resumed run too."""
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if seed is not None:
            torch.manual_seed(seed)
        c = self.cfg
        if self.env_cls is not None:
            t0 = time.perf_counter()
            trajs = self._episodes(prompts, c.group_size, c.temperature, c.max_new_tokens)
            return RolloutBatch(prompts, c.group_size, [t.ids for t in trajs], [t.logp for t in trajs],
                                [t.model_text for t in trajs], [t.finished for t in trajs], self.version,
                                time.perf_counter() - t0, self.instance, model_mask=[t.model for t in trajs],
                                turns=[tuple(t.turns) for t in trajs])
        params = SamplingParams(n=c.group_size, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens,
                                logprobs=0, ignore_eos=c.ignore_eos)
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p.token_ids) for p in prompts], params, use_tqdm=False)
        ids, lps, texts, finished = [], [], [], []
        for out in outs:
            for o in out.outputs:
                ids.append(list(o.token_ids))
                lps.append(sampled_logprobs(o))
                texts.append(o.text)
                finished.append(o.finish_reason == "stop")
        return RolloutBatch(prompts, c.group_size, ids, lps, texts, finished, self.version, time.perf_counter() - t0,
                            self.instance)

    def rollout(self, prompts: list[Prompt], seed: int | None = None) -> tuple[RolloutSummary, RolloutBatch]:
        """generate(), returned as two objects (called with num_returns=2): the driver fetches only
        the summary; the batch goes by reference to the reward actors and the learner ranks."""
        batch = self.generate(prompts, seed)
        return batch.summary(len(pickle.dumps(batch, protocol=5))), batch

    def evaluate(self, prompts: list[Prompt], samples: int, max_tokens: int, seed: int | None = None) -> EvalBatch:
        """`samples` responses per prompt (greedy when 1, else at the rollout temperature), at most
        `max_tokens` each, grouped by prompt."""
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if seed is not None:
            torch.manual_seed(seed)

        temperature = 0.0 if samples == 1 else self.cfg.temperature
        if self.env_cls is not None:
            trajs = self._episodes(prompts, samples, temperature, max_tokens)
            return EvalBatch(prompts, samples, [t.model_text for t in trajs], self.version,
                             tuple(sum(bool(turn.tool) for turn in t.turns) for t in trajs))
        params = SamplingParams(n=samples, temperature=temperature, top_p=self.cfg.top_p, max_tokens=max_tokens)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p.token_ids) for p in prompts], params, use_tqdm=False)
        return EvalBatch(prompts, samples, [o.text for out in outs for o in out.outputs], self.version)

    def evaluation(self, prompts: list[Prompt], samples: int, max_tokens: int,
                   seed: int | None = None) -> tuple[EvalSummary, EvalBatch]:
        """evaluate(), returned as two objects (called with num_returns=2): the driver fetches only
        the summary; the texts go by reference to the reward actors."""
        batch = self.evaluate(prompts, samples, max_tokens, seed)
        return batch.summary(), batch

    def _episodes(self, prompts: list[Prompt], n: int, temperature: float, budget: int) -> list[Trajectory]:
        """n multi-turn trajectories per prompt, grouped by prompt (rows j*n .. j*n+n-1)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def sample(contexts, max_tokens, stop):
            params = [SamplingParams(n=1, temperature=temperature, top_p=self.cfg.top_p, max_tokens=m, logprobs=0,
                                     stop=list(stop), include_stop_str_in_output=True) for m in max_tokens]
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts], params, use_tqdm=False)
            turns = []
            for out in outs:
                o = out.outputs[0]
                turns.append(Sampled(list(o.token_ids), sampled_logprobs(o), o.text,
                                     o.finish_reason == "stop" and not isinstance(o.stop_reason, str),
                                     cut=o.finish_reason == "length"))
            return turns

        trajs = [Trajectory(self.env_cls(p.text, p.answer, self.limits), p.token_ids, budget)
                 for p in prompts for _ in range(n)]
        return run_episodes(sample, self.encode, trajs, self.env_cfg.max_turns, self.tool_pool,
                            tuple(getattr(self.env_cls, "stop", ())), self.env_cfg.max_turn_tokens)

    def sleep(self) -> None:
        """Release the GPU memory (level 1: weights to host memory, KV cache dropped) for the learner."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Take the GPU memory back before loading weights or sampling."""
        self.llm.wake_up()

    def policy_version(self) -> int:
        """The version of the weights loaded (0: the initial ones, as after a restart)."""
        return self.version

    def load_weights(self, version: int, *shards: WeightShard) -> float:
        """Assemble every learner rank's shard into full HF-named weights (under LoRA: the adapters,
        merged into the base) and load them in place (vLLM repacks them for its kernels); returns seconds."""
        t0 = time.perf_counter()
        state = assemble_weights(shards)
        if shards and shards[0].lora is not None:  # adapters only: merged into this actor's copy of the base
            if self._base is None:
                self._base = load_base_weights(self.model_path)
            state = merge_lora(self._base, state, shards[0].lora)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        self.llm.collective_rpc(_repack_tied_lm_head)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self.version = version
        return time.perf_counter() - t0
