"""Rewards in verl's, TRL's and OpenRLHF's shapes, reward files by path, GSM8K answers and verl's
GSM8K parquet, scored through the real killable verifier processes."""
import json

import pytest

from actors.types import Prompt
from launch.config import RewardConfig
from launch.config_load import load_config
from launch.data import load_prompts, load_rows
from launch.rollouts import extras_metrics
from rewards.math import score_math
from rewards.registry import RewardScorer, RewardSpecError, check_spec, dry_call_reward
from rewards.result import RewardResult
from rewards.shapes import Sample, ShapeError, detect_shape, read_return
from tests.fixtures import my_reward, peer_rewards as peer

pytestmark = pytest.mark.unit
PEER = "tests.fixtures.peer_rewards"


@pytest.mark.parametrize("fn, shape", [
    (my_reward.length_bonus, "forkrl"), (peer.compute_score, "verl"), (peer.compute_score_old, "verl"),
    (peer.accuracy_reward, "trl"), (peer.difficulty_weighted, "trl"), (peer.reward_func, "openrlhf"),
    (lambda response, ground_truth, extra=None: 0.0, "forkrl"),
])
def test_the_shape_is_read_from_the_parameter_names(fn, shape):
    assert detect_shape(fn) == shape


def test_a_function_that_fits_no_shape_is_refused_naming_its_signature_and_the_shapes():
    with pytest.raises(RewardSpecError, match=r"three_arguments\(a, b, c\) fits no reward shape: expected forkrl's "
                                              r"fn\(response, ground_truth\), verl's compute_score"):
        check_spec(f"{PEER}:three_arguments")
    with pytest.raises(ShapeError, match="fits no reward shape"):
        detect_shape(lambda: 0.0)


@pytest.mark.parametrize("value, want", [
    (1.0, (1.0, True, ())), (0.5, (0.5, False, ())), (2, (2.0, True, ())),
    ([0.0], (0.0, False, ())),  # TRL's list of one
    ({"score": 0.3, "acc": True, "pred": "7", "n": 3}, (0.3, True, (("n", 3.0),))),  # verl: acc decides, text is no metric
    ({"score": 1.0, "correct": False}, (1.0, False, ())),
    ({"rewards": [0.2], "extra_logs": {"k": [4.0]}}, (0.2, False, (("k", 4.0),))),  # OpenRLHF
])
def test_return_values_give_score_verdict_and_extras(value, want):
    assert read_return(value) == want


@pytest.mark.parametrize("value, needle", [
    (float("nan"), "expected a finite float"), ("1.0", "expected a finite float"), (True, "expected a finite float"),
    ([1.0, 0.0], "has 2 values for 1 response"), ({"acc": True}, "without a score"),
    ({"score": 1.0, "acc": "yes"}, "expected a bool"), (None, "expected a finite float"),
])
def test_return_values_no_shape_allows_are_refused(value, needle):
    with pytest.raises(ShapeError, match=needle):
        read_return(value)


def test_partial_credit_and_format_bonuses_are_not_correct_answers():
    """A plain number is correct only at full credit: verl's 0.1 format score is a wrong answer."""
    s = RewardScorer(f"{PEER}:compute_score_format_bonus", timeout_s=10.0)
    try:
        right, formatted, nothing = s.score_samples([Sample("#### 5", "5"), Sample("#### 4", "5"), Sample("5", "5")])
    finally:
        s.close()
    assert (right.score, right.status) == (1.0, "correct")
    assert (formatted.score, formatted.status) == (0.1, "wrong")
    assert (nothing.score, nothing.status) == (0.0, "wrong")


def gsm8k_rows() -> list[dict]:
    """Rows as verl's examples/data_preprocess/gsm8k.py writes them."""
    instruction = "Let's think step by step and output the final answer after \"####\"."
    problems = [("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
                 "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
                 "in April and May.\n#### 72", "72"),
                ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?", "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she "
                 "earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10", "10")]
    return [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"{q} {instruction}"}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": gt},
             "extra_info": {"split": "train", "index": i, "answer": a, "question": q}}
            for i, (q, a, gt) in enumerate(problems)]


@pytest.fixture
def gsm8k_prompts(tmp_path, tiny_model):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    pq.write_table(pa.Table.from_pylist(gsm8k_rows()), tmp_path / "train.parquet")
    cfg = load_config(None, [f"model.path={tiny_model}", f"data.train_files=[{tmp_path / 'train.parquet'}]",
                             "data.answer_key=reward_model.ground_truth", "data.instruction="])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"  # the tiny model has none
    return load_prompts(cfg.data, cfg.model, tok)


def test_verl_gsm8k_parquet_trains_on_its_hash_answers_with_the_builtin_and_verl_rewards(gsm8k_prompts):
    """verl's GSM8K prompt asks for `#### 72`, which used to read as no_answer: every response
    scored 0 and the README's verl example trained on nothing."""
    first, second = gsm8k_prompts
    assert first.fields["data_source"] == "openai/gsm8k" and first.fields["extra_info"]["index"] == 0
    responses = [(first, "48 + 24 = 72 clips.\n#### 72"), (first, "#### 1,000"), (second, "She earned $10.\n#### 10"),
                 (second, "#### 10\nNo wait.\n#### 12")]  # the last `####` is the answer
    builtin = RewardScorer("math", timeout_s=10.0)
    verl = RewardScorer(f"{PEER}:compute_score", timeout_s=10.0)
    try:
        got = builtin.score_samples([Sample.of(p, r) for p, r in responses])
        via_verl = verl.score_samples([Sample.of(p, r) for p, r in responses])
    finally:
        builtin.close(), verl.close()
    assert [r.status for r in got] == ["correct", "wrong", "correct", "wrong"]
    assert [r.status for r in via_verl] == ["correct", "wrong", "correct", "wrong"]
    # extra_info reached the function (it returned its index), the text field `pred` is not a metric
    assert [dict(r.extras) for r in via_verl] == [{"index": 0.0}, {"index": 0.0}, {"index": 1.0}, {"index": 1.0}]
    assert extras_metrics(via_verl) == {"reward/fn/index": 0.5}


@pytest.mark.parametrize("response, gold, want", [
    ("Let me solve.\n#### 2. Compute the area\nThe area is 15 square units.", "2", "no_answer"),  # a heading
    ("Let me solve.\n#### 3. Final Answer\nTherefore, x = 5", "3", "wrong"),
    ("Let me solve.\n#### 3. Final Answer\nTherefore, x = 5", "5", "correct"),
    ("The answer is 15.\n\n#### Verification\nChecks out.", "15", "correct"),
    ("#### 72\nI hope it is correct.", "72", "correct"),
    ("The answer is 5.\n#### 6", "5", "wrong"),  # the last statement wins, either kind
    ("#### 6\nThe answer is 5.", "6", "wrong"),
])
def test_only_a_hashes_line_holding_a_number_is_an_answer_not_a_markdown_heading(response, gold, want):
    """Red-team finding: read as a stated-answer mark, `#### 2. Compute the area` made a section
    number the answer, scoring wherever it equalled the gold."""
    assert score_math(response, gold)[1] == want


def test_a_raw_gsm8k_answer_is_read_after_its_last_hashes():
    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert score_math(r"So \boxed{72}.", gold) == (1.0, "correct")
    assert score_math(r"So \boxed{24}.", gold) == (0.0, "wrong")
    assert score_math("#### 1,234", "1234") == (1.0, "correct")


def test_trl_functions_get_completions_prompts_and_the_rows_columns():
    chat = Prompt(0, [1], "42", "What is 6*7?", question=[{"role": "user", "content": "What is 6*7?"}],
                  fields={"solution": "42"})
    text = Prompt(1, [1], "9", "What is 4+5?", question="What is 4+5?", fields={"difficulty": "hard", "answer": "9"})
    acc = RewardScorer(f"{PEER}:accuracy_reward", timeout_s=10.0)
    weighted = RewardScorer(f"{PEER}:difficulty_weighted", timeout_s=10.0)
    try:
        a = acc.score_samples([Sample.of(chat, "It is 42"), Sample.of(chat, "It is 41")])
        w = weighted.score_samples([Sample.of(text, "9"), Sample.of(text, "8")])
    finally:
        acc.close(), weighted.close()
    assert [(r.score, r.status) for r in a] == [(1.0, "correct"), (0.0, "wrong")]
    assert [(r.score, r.status) for r in w] == [(1.0, "correct"), (0.0, "wrong")]


def test_openrlhf_functions_get_queries_prompts_and_labels_and_may_return_tensors_or_dicts():
    p = Prompt(0, [1], "7", "What is 3+4?")
    plain = RewardScorer(f"{PEER}:reward_func", timeout_s=10.0)
    logged = RewardScorer(f"{PEER}:reward_func_dict", timeout_s=10.0)
    try:
        (good, bad) = plain.score_samples([Sample.of(p, " 7"), Sample.of(p, " 8")])
        (d,) = logged.score_samples([Sample.of(p, " 7")])
    finally:
        plain.close(), logged.close()
    assert (good.score, good.status, bad.score) == (1.0, "correct", 0.0)
    # OpenRLHF's `scores` (its filtering signal) and extra_logs are logged; `rewards` is what trains
    assert d.score == 1.0 and dict(d.extras) == {"query_chars": float(len("What is 3+4? 7")), "scores": 1.0}


def test_a_batched_function_that_returns_the_wrong_count_is_an_error_naming_it():
    s = RewardScorer(f"{PEER}:two_for_one", timeout_s=10.0)
    try:
        (res,) = s.score_samples([Sample("a", "b")])
    finally:
        s.close()
    assert res.status == "error" and "two_for_one(completions, **kwargs)" in res.detail and "2 values" in res.detail


def test_a_reward_file_by_path_imports_with_its_siblings_and_the_path_becomes_absolute(tmp_path, monkeypatch):
    (tmp_path / "helpers.py").write_text("def norm(s):\n    return s.strip().lower()\n")
    (tmp_path / "my_score.py").write_text("from helpers import norm\n\n"
                                          "def score(response, ground_truth):\n"
                                          "    return float(norm(response) == norm(ground_truth))\n")
    monkeypatch.chdir(tmp_path)
    cfg = RewardConfig(fn="my_score.py:score")
    assert cfg.fn == f"{tmp_path / 'my_score.py'}:score"  # what the actors, config.yaml and a resume see
    s = RewardScorer(cfg.fn, timeout_s=10.0)
    try:
        assert [r.score for r in s.score_samples([Sample(" YES ", "yes"), Sample("no", "yes")])] == [1.0, 0.0]
    finally:
        s.close()
    with pytest.raises(RewardSpecError, match=r"nope.py not found"):
        check_spec(f"{tmp_path}/nope.py:score")
    (tmp_path / "broken.py").write_text("import not_a_module_xyz\n")
    with pytest.raises(RewardSpecError, match=r"broken.py does not import \(ModuleNotFoundError"):
        check_spec(f"{tmp_path}/broken.py:score")


def test_the_dry_call_names_the_function_and_row_and_passes_a_working_reward(gsm8k_prompts):
    dry_call_reward(RewardConfig(fn=f"{PEER}:compute_score"), gsm8k_prompts[0], "row 1 of train.parquet")
    with pytest.raises(RewardSpecError, match=r"reward.fn='tests.fixtures.peer_rewards:bad_acc': a dry call on row 1 "
                                              r"of train.parquet failed \(TypeError: bad_acc\(response, ground_truth\): "
                                              r"its 'acc' is 'yes'; expected a bool"):
        dry_call_reward(RewardConfig(fn=f"{PEER}:bad_acc"), gsm8k_prompts[0], "row 1 of train.parquet")


def test_dict_and_list_ground_truths_are_kept_as_json_and_as_they_were(tmp_path):
    rows = [{"prompt": "Name a root of x^2-1.", "answer": ["1", "-1"]},
            {"prompt": "Sort.", "answer": {"tests": ["assert f([2,1]) == [1,2]"]}}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load_rows([str(tmp_path / "d.jsonl")], "prompt", "answer")
    assert [r["answer"] for r in got] == ['["1", "-1"]', '{"tests": ["assert f([2,1]) == [1,2]"]}']
    assert [r["label"] for r in got] == [["1", "-1"], {"tests": ["assert f([2,1]) == [1,2]"]}]
    assert Sample("r", got[0]["answer"], got[0]["label"]).gold == ["1", "-1"]  # what verl's compute_score gets


def test_extras_are_averaged_over_the_responses_that_report_them():
    results = [RewardResult(1.0, "correct", extras=(("a", 1.0),)), RewardResult(0.0, "wrong", extras=(("a", 3.0),
                                                                                                      ("b", 5.0))),
               RewardResult(0.0, "wrong")]
    assert extras_metrics(results) == {"reward/fn/a": 2.0, "reward/fn/b": 5.0}


def test_extra_rewards_add_with_their_weights_and_the_verdict_stays_the_verifiers():
    """TRL's several reward_funcs with reward_weights: a format term adds to the score, is logged
    by its own name, and never turns a wrong answer into a correct one."""
    s = RewardScorer("math", timeout_s=10.0, extra=((f"{PEER}:format_reward", 0.5),))
    try:
        right, formatted_wrong, bare_right = s.score_samples([Sample(r"\boxed{5}", "5"), Sample(r"\boxed{4}", "5"),
                                                              Sample("The answer is 5", "5")])
    finally:
        s.close()
    assert (right.score, right.status, dict(right.extras)) == (1.5, "correct", {"math": 1.0, "format_reward": 1.0})
    assert (formatted_wrong.score, formatted_wrong.status) == (0.5, "wrong")
    assert (bare_right.score, bare_right.status, dict(bare_right.extras)["format_reward"]) == (1.0, "correct", 0.0)
    assert extras_metrics([right, formatted_wrong, bare_right]) == {"reward/fn/format_reward": 2 / 3,
                                                                    "reward/fn/math": 2 / 3}


@pytest.mark.parametrize("overrides, needle", [
    (["reward.extra_fns=[a.b:f, a.b:g]", "reward.extra_weights=[1.0]"], "reward.extra_weights: has 1 weight.s. for 2 reward.extra_fns"),
    (["reward.extra_fns=[a.b:f]", "reward.extra_weights=[.inf]"], "reward.extra_weights: must be finite"),
    (["reward.fn=x.y:score", "reward.extra_fns=[a.b:score]"], "reward.extra_fns: two rewards share a name"),
    (["reward.extra_fns=[a.b:f]", "learner.advantage=w_reinforce"], "w_reinforce reads only the verifier's verdict"),
])
def test_extra_reward_settings_that_cannot_work_are_refused_naming_the_key(overrides, needle):
    from launch.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)
