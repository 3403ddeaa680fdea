import json
import os
from pathlib import Path

import pytest

from launch.errors import ConfigError

from launch.config import TrainConfig

from launch.config_load import load_config

REPO = Path(__file__).resolve().parents[1]
from launch.data import DataError, load_rows, synthetic_arithmetic


def test_defaults_validate_and_overrides_apply(tmp_path):
    cfg = load_config(None, ["learner.mask.rho=0.5", "generation.group_size=8", "data.train_files=a.jsonl,b.jsonl"])
    assert cfg.learner.mask.rho == 0.5 and cfg.generation.group_size == 8
    assert cfg.data.train_files == ["a.jsonl", "b.jsonl"]
    p = tmp_path / "c.yaml"
    p.write_text("learner:\n  lr: 3.0e-6\n  mask: {mode: bottom, rho: 0.8}\n")
    cfg = load_config(p, ["learner.lr=1e-5"])
    assert cfg.learner.lr == 1e-5 and cfg.learner.mask.mode == "bottom"


@pytest.mark.parametrize("override, needle", [
    (["learner.mask.rho=0"], "learner.mask.rho: must be in (0, 1]"),
    (["learner.mask.rho=1.5"], "learner.mask.rho"),
    (["learner.mask.mode=middle"], "learner.mask.mode"),
    (["learner.bogus=1"], "learner.bogus: unknown config key"),
    (["nonsense=1"], "nonsense: unknown config key"),
    (["steps=many"], "steps: expected int"),
    (["generation.group_size=1"], "generation.group_size"),
    (["learner.micro_batch_size=3"], "learner.micro_batch_size"),
    (["learner.aggregation=sum"], "learner.aggregation"),
    (["steps"], "expected key=value"),
    # values that used to be accepted and produce garbage (issue 25)
    (["tracking.name=on"], "tracking.name: expected a string, got True"),
    (["tracking.name=null"], "tracking.name: expected a string, got None"),
    (["tracking.name=../../x"], "tracking.name: must be a plain name"),
    (["learner.grad_clip=0"], "learner.grad_clip: must be a finite number > 0"),
    (["learner.grad_clip=.nan"], "learner.grad_clip: must be a finite number > 0"),
    (["learner.w_lambda=-1"], "learner.w_lambda: must be a finite number >= 0"),
    (["reward.overlong_weight=-1"], "reward.overlong_weight: must be a finite number >= 0"),
    (["reward.format_weight=-0.5"], "reward.format_weight: must be a finite number >= 0"),
    (["learner.weight_decay=-0.1"], "learner.weight_decay: must be a finite number >= 0"),
    (["generation.temperature=.inf"], "generation.temperature: must be finite"),
    (["learner.lr=.inf"], "learner.lr: must be finite"),
    (["learner.logprob_chunk=0"], "learner.logprob_chunk: must be >= 1"),
    (["data.num_synthetic=0"], "data.num_synthetic: must be >= 1"),
    (["reward.timeout_s=.inf"], "reward.timeout_s: must be finite"),
    (["learner.micro_batch_size=0"], "learner.micro_batch_size: must be >= 1"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="max_staleness"):
        TrainConfig(max_staleness=-1)


def test_malformed_rows_name_file_and_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n" + "{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_rows([str(f)], "prompt", "answer")
    f.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n" + json.dumps({"question": "x", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl row 2: missing field 'prompt'"):
        load_rows([str(f)], "prompt", "answer")
    f.write_text(json.dumps({"prompt": "1+1", "answer": ""}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'answer' must be a non-empty"):
        load_rows([str(f)], "prompt", "answer")
    with pytest.raises(DataError, match="not found"):
        load_rows([str(tmp_path / "missing.jsonl")], "prompt", "answer")


def test_parquet_rows_and_custom_keys(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"q": ["What is 2+2?"], "a": [4]}), tmp_path / "d.parquet")
    assert prompt_answer(load_rows([str(tmp_path / "d.parquet")], "q", "a")) == [{"prompt": "What is 2+2?", "answer": "4"}]


def test_synthetic_arithmetic_is_seeded_and_correct():
    import re

    rows = synthetic_arithmetic(400, 20, seed=3)
    assert rows == synthetic_arithmetic(400, 20, seed=3) and rows != synthetic_arithmetic(400, 20, seed=4)
    ops = {"sum": ("+", "plus", "sum", "Add", "more"), "diff": (" - ", "minus", "Subtract", "difference", "away"),
           "prod": ("times", "*", "multiplied", " x ")}
    seen = set()
    for r in rows:
        q = r["prompt"]
        a, b = map(int, re.findall(r"\d+", q))
        (kind,) = [k for k, words in ops.items() if any(w in q for w in words)]
        want = {"sum": a + b, "diff": abs(a - b), "prod": a * b}[kind]
        assert int(r["answer"]) == want, q
        seen.add(kind)
        assert 1 <= a <= 20 and 1 <= b <= 20
    assert seen == {"sum", "diff", "prod"}
    only_add = synthetic_arithmetic(50, 9, seed=0, kinds=["add"])
    assert all(int(r["answer"]) <= 18 for r in only_add)
    with pytest.raises(ConfigError, match="data.synthetic_kinds"):
        load_config(None, ["data.synthetic_kinds=add,division"])


def test_held_out_prompts_that_repeat_training_prompts_are_removed(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from launch.data import load_eval_prompts, tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = load_config(None, ["model.chat_template=false", "data.instruction=", "eval.every=1", "eval.num_prompts=10"])
    train = tokenize([{"prompt": "the cat", "answer": "yes"}, {"prompt": "a dog", "answer": "yes"}], tok, False, "",
                     64, "train")
    f = tmp_path / "eval.jsonl"
    # the same questions up to whitespace, plus two new ones
    f.write_text("\n".join(json.dumps(r) for r in [{"prompt": " the  cat ", "answer": "yes"}, {"prompt": "red up", "answer": "no"},
                                                   {"prompt": "a\tdog", "answer": "yes"}, {"prompt": "big it", "answer": "no"}]))
    cfg.eval.files = [str(f)]
    held = load_eval_prompts(cfg.eval, cfg.data, cfg.model, tok, train)
    assert [p.text for p in held] == ["red up", "big it"]
    f.write_text(json.dumps({"prompt": "the cat", "answer": "yes"}) + "\n")
    with pytest.raises(DataError, match="every question .* is also a training question"):
        load_eval_prompts(cfg.eval, cfg.data, cfg.model, tok, train)
    # generated held-out rows never repeat a generated training question either
    cfg = load_config(None, ["eval.num_prompts=50", "data.synthetic_max_operand=5"])
    rows = synthetic_arithmetic(cfg.data.num_synthetic, 5, cfg.data.seed)
    train = tokenize(rows, tok, False, "", 64, "train")
    held = load_eval_prompts(cfg.eval, cfg.data, load_config(None, ["model.chat_template=false"]).model, tok, train)
    assert not {" ".join(p.text.split()) for p in held} & {" ".join(r["prompt"].split()) for r in rows}


def prompt_answer(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]


VERL_ROW = {"data_source": "gsm8k", "prompt": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "What is 2+3?"}],
            "reward_model": {"style": "rule", "ground_truth": "5"}, "extra_info": {"index": 0}}
OPENRLHF_ROW = {"input": [{"role": "user", "content": "What is 7*6?"}], "label": 42}


def test_verl_style_parquet_with_nested_keys_and_chat_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([VERL_ROW]), tmp_path / "train.parquet")
    rows = load_rows([str(tmp_path / "train.parquet")], "prompt", "reward_model.ground_truth")
    assert prompt_answer(rows) == [{"prompt": VERL_ROW["prompt"], "answer": "5"}]
    # the row's other columns travel with it, for rewards that read them (verl's data_source, extra_info)
    assert rows[0]["fields"] == {k: v for k, v in VERL_ROW.items() if k != "prompt"} and rows[0]["label"] is None


def test_openrlhf_style_jsonl_json_and_save_to_disk_load_alike(tmp_path):
    import datasets

    (tmp_path / "d.jsonl").write_text(json.dumps(OPENRLHF_ROW) + "\n")
    (tmp_path / "d.json").write_text(json.dumps([OPENRLHF_ROW]))
    datasets.Dataset.from_list([OPENRLHF_ROW]).save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list([OPENRLHF_ROW])}).save_to_disk(str(tmp_path / "dict"))
    want = [{"prompt": OPENRLHF_ROW["input"], "answer": "42"}]
    for name in ("d.jsonl", "d.json", "folder", "dict"):
        assert prompt_answer(load_rows([str(tmp_path / name)], "input", "label")) == want, name


def test_bad_chat_rows_and_nested_keys_name_file_row_and_key(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(VERL_ROW) + "\n" + json.dumps({**VERL_ROW, "reward_model": {"style": "rule"}}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl row 2: missing field 'reward_model.ground_truth'"):
        load_rows([str(f)], "prompt", "reward_model.ground_truth")
    f.write_text(json.dumps({"prompt": [{"role": "system", "content": "hi"}], "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl row 1: field 'prompt': the chat messages hold no 'user' turn"):
        load_rows([str(f)], "prompt", "answer")
    f.write_text(json.dumps({"prompt": [{"role": "user"}], "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl row 1: field 'prompt' must be a non-empty string or a list of"):
        load_rows([str(f)], "prompt", "answer")


def test_chat_messages_get_the_template_and_the_instruction_on_the_last_user_turn(tiny_model):
    from transformers import AutoTokenizer

    from launch.data import tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    rows = [{"prompt": VERL_ROW["prompt"], "answer": "5"}]
    (p,) = tokenize(rows, tok, True, "Box it.", 256, "src")
    assert tok.decode(p.token_ids) == tok.decode(tok("system: Be brief.\nuser: What is 2+3? Box it.\n")["input_ids"])
    assert p.text == "What is 2+3?" and p.answer == "5"
    with pytest.raises(DataError, match="src row 1: chat-message prompts need model.chat_template=true"):
        tokenize(rows, tok, False, "", 256, "src")


def test_single_gpu_config_loads_and_its_placement_adds_up():
    cfg = load_config(REPO / "configs/single_gpu.yaml")
    g, l = cfg.generation, cfg.learner
    assert g.sleep_mode and cfg.max_staleness == 0
    assert g.num_actors * g.num_gpus + l.num_ranks * l.num_gpus <= 1  # one GPU, shared by fractions
    with pytest.raises(ConfigError, match=r"^learner.num_gpus: .* must add up to at most 1"):
        load_config(REPO / "configs/single_gpu.yaml", ["learner.num_gpus=0.7"])
    with pytest.raises(ConfigError, match=r"^max_staleness: must be 0 with generation.sleep_mode"):
        load_config(REPO / "configs/single_gpu.yaml", ["max_staleness=1"])
    with pytest.raises(ConfigError, match=r"^generation.num_gpus: generation.sleep_mode shares a GPU"):
        load_config(None, ["generation.sleep_mode=true", "max_staleness=0"])


def test_the_single_gpu_lora_config_loads_and_targets_a_qwen2_model(tmp_path):
    """configs/single_gpu_lora.yaml validates, and its target modules exist in a model of
    Qwen2.5-1.5B's architecture (built from its config on the meta device; no weights needed)."""
    from transformers import Qwen2Config

    from launch.models import check_lora_targets

    cfg = load_config(REPO / "configs/single_gpu_lora.yaml")
    assert cfg.learner.lora.rank == 32 and cfg.generation.sleep_mode
    Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True).save_pretrained(tmp_path)
    check_lora_targets(cfg.learner.lora, str(tmp_path))
    with pytest.raises(ConfigError, match=r"^learner.lora.target_modules: 'c_attn' matches no linear module"):
        check_lora_targets(load_config(REPO / "configs/single_gpu_lora.yaml",
                                       ["learner.lora.target_modules=[c_attn]"]).learner.lora, str(tmp_path))


def test_every_config_key_is_listed_with_its_type_default_and_docstring():
    """forkrl config reads the tree itself: every leaf key, none without a docstring."""
    import dataclasses
    import subprocess
    import sys

    from launch.config_docs import config_keys

    rows = config_keys()
    keys = [k for k, *_ in rows]
    assert len(keys) == len(set(keys)) > 100
    assert all(doc for *_, doc in rows), [k for k, *_, doc in rows if not doc]
    cfg = TrainConfig()
    for key, _, default, _ in rows:  # the listed default is the tree's own
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == default, key
    assert ("learner.mask.rho", "float", 0.2) == next(r[:3] for r in rows if r[0] == "learner.mask.rho")
    out = subprocess.run([sys.executable, "-m", "launch.cli", "config", "learner.lora"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "learner.lora.rank (int, default 0)" in out.stdout
    assert not dataclasses.is_dataclass(rows[0][2])


def test_print_config_shows_the_resolved_tree_and_starts_nothing(tmp_path):
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", "configs/tiny.yaml", "--print-config",
                          "learner.lr=0.002", f"tracking.run_dir={tmp_path}/run"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    tree = yaml.safe_load(out.stdout)
    assert tree["learner"]["lr"] == 0.002 and tree["steps"] == 4 and tree["learner"]["mask"]["rho"] == 0.2
    assert not (tmp_path / "run").exists()


def test_numeric_answers_keep_the_text_the_file_has(tmp_path):
    """A column mixing big integers and floats is not turned into float64 (Arrow's inference did:
    9007199254740993 became '9007199254740992.0', so the right answer scored wrong)."""
    answers = ["9007199254740993", "2.5", "12345678901234567891", "1e20", "-0", "72"]
    lines = "".join(f'{{"prompt": "q{i}", "answer": {a}}}\n' for i, a in enumerate(answers))
    (tmp_path / "rows.jsonl").write_text(lines)
    assert [r["answer"] for r in load_rows([str(tmp_path / "rows.jsonl")], "prompt", "answer")] == answers
    (tmp_path / "rows.json").write_text("[" + ",".join(lines.splitlines()) + "]")
    assert [r["answer"] for r in load_rows([str(tmp_path / "rows.json")], "prompt", "answer")] == answers
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "answer": 1}\n{"prompt": "q", \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_rows([str(tmp_path / "bad.jsonl")], "prompt", "answer")


def test_overlong_prompts_are_left_out_and_counted_or_refused_by_choice(tiny_model, caplog):
    from transformers import AutoTokenizer

    from launch.data import tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"prompt": "yes " * n, "answer": "yes"} for n in (3, 40, 5, 60)]
    with caplog.at_level("WARNING", logger="launch.data"):
        kept = tokenize(rows, tok, False, "", 16, "d.jsonl", "drop")
    assert [p.uid for p in kept] == [0, 2]  # rows keep their own numbers
    assert "d.jsonl: left out 2 of 4 prompts over data.max_prompt_tokens=16 (the longest has" in caplog.text
    with pytest.raises(DataError, match=r"d.jsonl row 2: prompt has \d+ tokens, over data.max_prompt_tokens=16"):
        tokenize(rows, tok, False, "", 16, "d.jsonl", "error")
    with pytest.raises(DataError, match=r"d.jsonl: every prompt is over data.max_prompt_tokens=2"):
        tokenize(rows, tok, False, "", 2, "d.jsonl", "drop")
    with pytest.raises(ConfigError, match="data.overlong_prompts"):
        load_config(None, ["data.overlong_prompts=skip"])


def hub_dataset_cache(root: Path) -> Path:
    """A Hub cache laid out as huggingface_hub lays it out, holding one dataset repo `forkrl/toy`
    with two configs as parquet files, declared in its README the way Hub datasets declare them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = root / "datasets--forkrl--toy"
    snap = repo / "snapshots" / commit
    for config, rows in {"main": 3, "socratic": 2}.items():
        for split in ("train", "test"):
            (snap / config).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([{"question": f"{config} {split} {i}: 2+{i}?",
                                                  "answer": f"2+{i} = <<2+{i}={2 + i}>>{2 + i}\n#### {2 + i}"}
                                                 for i in range(rows)]), snap / config / f"{split}-00000-of-00001.parquet")
    (snap / "README.md").write_text(
        "---\nconfigs:\n" + "".join(f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train-*\n"
                                    f"  - split: test\n    path: {c}/test-*\n" for c in ("main", "socratic")) + "---\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_datasets_by_name_config_and_split_from_the_local_hub_cache_offline(tmp_path):
    """data.train_files=org/name[:config][@split] goes through huggingface_hub's cache and datasets'
    loader (HF_HUB_OFFLINE=1: no network here); a missing one is named in one line."""
    import subprocess
    import sys

    cache = hub_dataset_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    code = ("import json, sys; from launch.data import load_rows; "
            "print(json.dumps([[r['prompt'], r['answer']] for r in load_rows(sys.argv[1:], 'question', 'answer')]))")
    root = Path(__file__).resolve().parents[1]

    def rows(*entries):
        out = subprocess.run([sys.executable, "-c", code, *entries], capture_output=True, text=True, env=env, cwd=root)
        return out

    got = rows("forkrl/toy:main", "forkrl/toy:socratic@test")
    assert got.returncode == 0, got.stderr[-2000:]
    prompts = [p for p, _ in json.loads(got.stdout)]
    assert prompts == [f"main train {i}: 2+{i}?" for i in range(3)] + [f"socratic test {i}: 2+{i}?" for i in range(2)]
    bad = rows("forkrl/toy:main@validation")
    assert bad.returncode != 0 and "forkrl/toy:main@validation" in bad.stderr and "split" in bad.stderr.lower()
    missing = rows("forkrl/absent@test")
    assert missing.returncode != 0
    assert ("forkrl/absent@test: no such local file or folder, and as a Hub dataset it is not in the Hub cache"
            in missing.stderr and "HF_HUB_OFFLINE is set" in missing.stderr), missing.stderr[-2000:]


def test_a_saved_dataset_dicts_split_is_named_with_at(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a", "answer": "1"}]),
                          "test": datasets.Dataset.from_list([{"prompt": "b", "answer": "2"}])}).save_to_disk(
        str(tmp_path / "dict"))
    assert [r["prompt"] for r in load_rows([str(tmp_path / "dict")], "prompt", "answer")] == ["a"]
    assert [r["prompt"] for r in load_rows([f"{tmp_path / 'dict'}@test", str(tmp_path / "dict")], "prompt",
                                           "answer")] == ["b", "a"]
    with pytest.raises(DataError, match=r"holds splits train, test and none is 'dev'; name one as .*@SPLIT"):
        load_rows([f"{tmp_path / 'dict'}@dev"], "prompt", "answer")
    (tmp_path / "d.jsonl").write_text('{"prompt": "c", "answer": "3"}\n')
    with pytest.raises(DataError, match=r"d.jsonl@test: only a save_to_disk folder or a Hub dataset has splits"):
        load_rows([f"{tmp_path / 'd.jsonl'}@test"], "prompt", "answer")
