"""Training data on the driver: rows from jsonl / json / parquet / save_to_disk folders (through the
`datasets` library) or the built-in generator, tokenized once.

Every malformed row is reported with its file and row number before any actor starts.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path

from actors.types import Prompt
from launch.rng_state import rng_from_json, rng_to_json

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and row."""


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jon", "Kemi", "Lea"]
_THINGS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "shells", "cards"]


def _add(rng, a, b):
    return rng.choice([f"What is {a} + {b}?", f"Compute {a} plus {b}.", f"{a} + {b} = ?", f"Add {a} and {b}.",
                       f"What is the sum of {a} and {b}?"]), a + b


def _sub(rng, a, b):
    hi, lo = max(a, b), min(a, b)
    return rng.choice([f"What is {hi} - {lo}?", f"Compute {hi} minus {lo}.", f"{hi} - {lo} = ?",
                       f"Subtract {lo} from {hi}.", f"What is the difference between {hi} and {lo}?"]), hi - lo


def _mul(rng, a, b):
    return rng.choice([f"What is {a} times {b}?", f"What is {a} * {b}?", f"Compute {a} multiplied by {b}.",
                       f"{a} x {b} = ?"]), a * b


def _word(rng, a, b):
    who, what = rng.choice(_NAMES), rng.choice(_THINGS)
    if rng.random() < 0.5:
        return f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?", a + b
    hi, lo = max(a, b), min(a, b)
    return f"{who} has {hi} {what} and gives away {lo}. How many {what} does {who} have left?", hi - lo


# Problem kinds of the built-in generator: each makes (question, integer answer) from two operands.
KINDS = {"add": _add, "sub": _sub, "mul": _mul, "word": _word}


def synthetic_arithmetic(n: int, max_operand: int, seed: int, kinds: list[str] = tuple(KINDS),
                         min_operand: int = 1) -> list[dict]:
    """Seeded grade-school arithmetic with exact integer answers, as {prompt, answer} rows: the
    kinds in turn at random, operands in min_operand..max_operand, several phrasings of each kind."""
    rng = random.Random(seed)
    rows = []
    lo, hi = min_operand, max_operand
    for _ in range(n):
        question, answer = KINDS[rng.choice(list(kinds))](rng, rng.randint(lo, hi), rng.randint(lo, hi))
        rows.append({"prompt": question, "answer": str(answer)})
    return rows


_HUB_DATASET = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<config>[\w.-]+))?")
_SPLIT = re.compile(r"(?P<base>.+)@(?P<split>[A-Za-z0-9][\w.-]*)")


def read_source(entry: str, setting: str = "data.train_files") -> list[dict]:
    """Rows of one data entry: a local file or save_to_disk folder (`folder@test` picks a split of
    a saved DatasetDict), or a Hub dataset `org/name[:config][@split]` (split `train` unless named)."""
    path = Path(entry).expanduser()
    if path.exists():
        return _read_file(path, setting)
    m = _SPLIT.fullmatch(entry)
    base, split = (m["base"], m["split"]) if m else (entry, None)
    if (base_path := Path(base).expanduser()).exists():
        return _read_file(base_path, setting, split)
    hub = _HUB_DATASET.fullmatch(base)
    if hub and not entry.startswith((".", "/", "~")) and Path(base).suffix.lower() not in (".jsonl", ".json", ".parquet"):
        return _read_hub(hub["repo"], hub["config"], split or "train", setting)
    raise DataError(f"{setting}: {entry} not found (a jsonl / json / parquet file, a save_to_disk folder[@split], "
                    "or a Hub dataset org/name[:config][@split])")


def _read_hub(repo: str, config: str | None, split: str, setting: str) -> list[dict]:
    """A Hub dataset's split through huggingface_hub's cache (fetched once; HF_HUB_OFFLINE=1 reads
    the cache alone), loaded by `datasets` from the snapshot (its README's configs name the files)."""
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    name = f"{repo}{':' + config if config else ''}@{split}"
    try:
        folder = snapshot_download(repo, repo_type="dataset")
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise DataError(f"{setting}: {name}: no such local file or folder, and as a Hub dataset it is not in the Hub cache "
                        f"({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'})"
                        + (" and HF_HUB_OFFLINE is set" if offline else f" and the Hub could not be reached ({type(e).__name__})")
                        + "; download it once where the Hub is reachable, or give a local file") from None
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(folder, config, split=split)
    except ValueError as e:  # an unknown config or split: datasets names the ones there are
        raise DataError(f"{setting}: Hub dataset {name!r}: {str(e).splitlines()[0][:300]}") from None
    return ds.to_list()


def _read_file(path: Path, setting: str = "data.train_files", split: str | None = None) -> list[dict]:
    """Rows of a jsonl, json or parquet file, or of a folder written by `datasets`' save_to_disk
    (a DatasetDict's `split`, `train` unless named), read through the `datasets` library (in
    memory: no cache files)."""
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path), keep_in_memory=True)
        except FileNotFoundError as e:
            raise DataError(f"{setting}: {path} is not a folder written by datasets' save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            want = split or "train"
            if want not in ds:
                raise DataError(f"{setting}: {path} holds splits {', '.join(ds)} and none is {want!r}; "
                                f"name one as {path}@SPLIT")
            ds = ds[want]
        elif split:
            raise DataError(f"{setting}: {path}@{split}: the folder holds one dataset, not splits; leave out @{split}")
        return ds.to_list()
    if split:
        raise DataError(f"{setting}: {path}@{split}: only a save_to_disk folder or a Hub dataset has splits")
    if not path.is_file():
        raise DataError(f"{setting}: {path} not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError(f"{setting}: {path} is not .jsonl, .json, .parquet or a save_to_disk folder")
    if suffix in (".jsonl", ".json"):
        return _read_json_exact(path)
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its parser logs an ERROR before raising
    try:
        ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as e:  # datasets wraps parser errors in several types
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        quiet.setLevel(level)
    return ds.to_list()


def _read_json_exact(path: Path) -> list[dict]:
    """Rows of a jsonl file (one object a line) or a json file (a list of objects), numbers kept as
    the text the file has: Arrow's type inference (what datasets' JSON reader uses) turns a column
    mixing 9007199254740993 and 2.5 into float64, so a right answer would score wrong. A bad line
    is named by its number."""
    exact = {"parse_int": str, "parse_float": str, "parse_constant": str}
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text(), **exact)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a JSON list of objects (one per row), got {type(rows).__name__}")
        return rows
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, **exact)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


_MISSING = object()


def get_field(row: dict, dotted: str):
    """row['a']['b'] for 'a.b' (a key that itself holds a dot is found whole first); _MISSING if absent."""
    if dotted in row:
        return row[dotted]
    node = row
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _is_scalar(v) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip() != ""


def _check_messages(msgs, where: str) -> list[dict]:
    """A chat prompt: [{role, content}, ...] with string values and at least one user turn."""
    if not msgs or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                           for m in msgs):
        raise DataError(f"{where} must be a non-empty string or a list of {{role, content}} chat messages")
    if not any(m["role"] == "user" for m in msgs):
        raise DataError(f"{where}: the chat messages hold no 'user' turn")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def load_rows(files: list[str], prompt_key: str, answer_key: str, setting: str = "data.train_files") -> list[dict]:
    """Rows of all files as {prompt, answer, label, fields}: prompt a string or a list of chat
    messages, answer a string (a dict or list ground truth as JSON, kept as it was in `label`),
    fields the row's other columns for rewards that read them (verl's data_source and extra_info,
    TRL's columns). Keys may be dotted paths into nested fields (reward_model.ground_truth). Any bad
    row raises DataError naming the file, row and key."""
    out = []
    for f in files:
        path = f  # named in every message as the user wrote it
        for i, row in enumerate(read_source(f, setting), start=1):
            values = {}
            for key in (prompt_key, answer_key):
                value = get_field(row, key)
                if value is _MISSING or value is None:  # a row without it (Arrow fills in None)
                    raise DataError(f"{path} row {i}: missing field {key!r} (fields: {', '.join(str(k) for k, v in row.items() if v is not None)})")
                if key == prompt_key and isinstance(value, list):
                    value = _check_messages(value, f"{path} row {i}: field {key!r}")
                elif key == answer_key and isinstance(value, (dict, list)) and value:
                    pass  # a structured ground truth (several answers, test cases): the reward reads it
                elif not _is_scalar(value):
                    kind = "a non-empty string or a list of chat messages" if key == prompt_key else \
                        "a non-empty string, number, dict or list"
                    raise DataError(f"{path} row {i}: field {key!r} must be {kind}, got {value!r}"[:300])
                values[key] = value
            prompt, answer = values[prompt_key], values[answer_key]
            structured = isinstance(answer, (dict, list))
            out.append({"prompt": prompt if isinstance(prompt, list) else str(prompt),
                        "answer": json.dumps(answer, ensure_ascii=False) if structured else str(answer),
                        "label": answer if structured else None,
                        "fields": {k: v for k, v in row.items() if k != prompt_key}})
    if files and not out:
        raise DataError(f"{setting}: no rows in {', '.join(files)}")
    return out


def question_text(prompt) -> str:
    """The text a prompt asks: the string itself, or the user turns of chat messages."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m["role"] == "user")


def tokenize(rows: list[dict], tokenizer, chat_template: bool, instruction: str, max_prompt_tokens: int,
             source: str, overlong: str = "error") -> list[Prompt]:
    """Token ids per row: the chat template over the row's messages (or one user turn of its text),
    `instruction` appended to the last user turn; raw text without the template. Rows over
    `max_prompt_tokens` raise DataError (overlong='error') or are left out and counted ('drop')."""
    prompts, dropped, longest = [], 0, 0
    for i, row in enumerate(rows):
        msgs = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        if instruction:
            last = max(j for j, m in enumerate(msgs) if m["role"] == "user")
            msgs = [dict(m, content=f"{m['content']} {instruction}".strip()) if j == last else m
                    for j, m in enumerate(msgs)]
        if chat_template:
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        elif isinstance(row["prompt"], list):
            raise DataError(f"{source} row {i + 1}: chat-message prompts need model.chat_template=true")
        else:
            ids = tokenizer(msgs[0]["content"], add_special_tokens=True)["input_ids"]
        ids = list(ids)
        if len(ids) > max_prompt_tokens:
            if overlong == "error":
                raise DataError(f"{source} row {i + 1}: prompt has {len(ids)} tokens, over data.max_prompt_tokens="
                                f"{max_prompt_tokens} (data.overlong_prompts=drop leaves such rows out)")
            dropped, longest = dropped + 1, max(longest, len(ids))
            continue
        if not ids:
            raise DataError(f"{source} row {i + 1}: prompt is empty after tokenization")
        prompts.append(Prompt(uid=i, token_ids=ids, answer=row["answer"], text=question_text(row["prompt"]),
                              question=row["prompt"], label=row.get("label"), fields=row.get("fields", {})))
    if dropped:
        logger.warning("%s: left out %d of %d prompts over data.max_prompt_tokens=%d (the longest has %d tokens; "
                       "data.overlong_prompts=error stops instead)", source, dropped, len(rows), max_prompt_tokens,
                       longest)
    if not prompts:
        raise DataError(f"{source}: every prompt is over data.max_prompt_tokens={max_prompt_tokens} (the longest has "
                        f"{longest} tokens)")
    return prompts


def load_prompts(cfg, model_cfg, tokenizer) -> list[Prompt]:
    """The config's training prompts, tokenized; raises DataError before any work starts."""
    if cfg.train_files:
        rows, source = load_rows(cfg.train_files, cfg.prompt_key, cfg.answer_key), ",".join(cfg.train_files)
    else:
        rows = synthetic_arithmetic(cfg.num_synthetic, cfg.synthetic_max_operand, cfg.seed, cfg.synthetic_kinds,
                                    cfg.synthetic_min_operand)
        source = "synthetic data"
    return tokenize(rows, tokenizer, model_cfg.chat_template, cfg.instruction, cfg.max_prompt_tokens, source,
                    cfg.overlong_prompts)


def normalise(text: str) -> str:
    """A question's identity for the held-out check: exact text with runs of whitespace collapsed."""
    return " ".join(text.split())


def load_eval_prompts(cfg, data_cfg, model_cfg, tokenizer, train: list[Prompt]) -> list[Prompt]:
    """Held-out prompts, never training prompts: eval.files (rows whose question is also a training
    question are removed, with a warning), else generated rows the training set lacks. The first
    eval.num_prompts of them, the same set at every evaluation."""
    seen = {normalise(p.text) for p in train}
    if cfg.files:
        rows, source = load_rows(cfg.files, data_cfg.prompt_key, data_cfg.answer_key, "eval.files"), ",".join(cfg.files)
    else:
        rows = synthetic_arithmetic(cfg.num_prompts * 20, data_cfg.synthetic_max_operand, data_cfg.seed + 1,
                                    data_cfg.synthetic_kinds, data_cfg.synthetic_min_operand)
        source = "synthetic eval data"
    held_out = [r for r in rows if normalise(question_text(r["prompt"])) not in seen]
    if len(held_out) < len(rows) and cfg.files:
        logger.warning("eval.files: removed %d of %d rows whose question is also a training question",
                       len(rows) - len(held_out), len(rows))
    if not held_out:
        raise DataError(f"eval.files: every question in {source} is also a training question; nothing is held out")
    prompts = tokenize(held_out, tokenizer, model_cfg.chat_template, data_cfg.instruction, data_cfg.max_prompt_tokens,
                       source, data_cfg.overlong_prompts)
    return prompts[: cfg.num_prompts]


class PromptStream:
    """Endless seeded epochs over the prompts, reshuffled each epoch. Its position (`state`) is
    what a checkpoint records, so a resumed run issues the same prompts in the same order."""

    def __init__(self, prompts: list[Prompt], seed: int):
        self.prompts, self.rng = prompts, random.Random(seed)
        self.order: list[int] = []
        self.issued = 0  # take() calls so far: numbers each rollout batch (its sampling seed)

    def state(self) -> dict:
        """JSON-able position: the rest of this epoch's order, the shuffler's RNG, the batch count."""
        return {"order": list(self.order), "rng": rng_to_json(self.rng.getstate()), "issued": self.issued}

    def restore(self, state: dict) -> None:
        self.rng.setstate(rng_from_json(state["rng"]))
        self.order, self.issued = list(state["order"]), state["issued"]

    def take(self, k: int) -> list[Prompt]:
        self.issued += 1
        out = []
        while len(out) < k:
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            out.append(self.prompts[self.order.pop()])
        return out
