import json

import pytest

from launch.config import ConfigError, TrainConfig, load_config
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
    assert load_rows([str(tmp_path / "d.parquet")], "q", "a") == [{"prompt": "What is 2+2?", "answer": "4"}]


def test_synthetic_arithmetic_is_seeded_and_correct():
    rows = synthetic_arithmetic(200, 20, seed=3)
    assert rows == synthetic_arithmetic(200, 20, seed=3) and rows != synthetic_arithmetic(200, 20, seed=4)
    for r in rows:
        q = r["prompt"]
        if q.startswith("What is ") and " + " in q:
            a, b = q[len("What is "):-1].split(" + ")
            assert int(r["answer"]) == int(a) + int(b)
        elif " times " in q:
            a, b = q[len("What is "):-1].split(" times ")
            assert int(r["answer"]) == int(a) * int(b)
