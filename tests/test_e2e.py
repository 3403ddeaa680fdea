"""End to end through the real CLI: Ray + vLLM + DeepSpeed ZeRO-3 + wandb (offline)."""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import re
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REQUIRED = ["step", "policy_version", "reward/mean", "entropy/mean", "mask/threshold", "mask/kept_fraction",
            "staleness/max", "timing/step_s", "timing/generate_s", "timing/learn_s", "timing/weight_sync_s"]


def readme_metric_names() -> list[str]:
    """Metric names in the README's 'Metrics per step' paragraph, braces expanded."""
    text = (REPO / "README.md").read_text()
    para = text[text.index("Metrics per step"):]
    para = para[: para.index("\n\n")]
    names = []
    for name in re.findall(r"`([a-z_]+/[^`]+|policy_version)`", para):
        m = re.search(r"\{([^}]*)\}", name)
        names += [name[: m.start()] + x + name[m.end():] for x in m.group(1).split(",")] if m else [name]
    return names


def forkrl(*args, timeout=900, env=None, cwd=REPO):
    return subprocess.run([str(BIN / "forkrl"), "train", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_SILENT": "true", **(env or {})})


def tiny_args(tiny_model, yes_data, run_dir):
    return ["--config", REPO / "configs/tiny.yaml", f"model.path={tiny_model}", f"data.train_files={yes_data}",
            f"tracking.run_dir={run_dir}"]


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_cli_async_two_zero3_ranks(tiny_model, yes_data, tmp_path):
    from tests.test_network import assert_loopback_only, run_watching_sockets

    run_dir = tmp_path / "run"
    rendezvous = lambda: set(Path(tempfile.gettempdir()).glob("forkrl-rendezvous-*"))  # noqa: E731
    before = rendezvous()
    # Overlong shaping on (L_cache 4 of 8 tokens) also checks the reward actor's shaping wiring;
    # with the reward rule its length differences train (the random model never earns the reward).
    # While it runs, every listening socket of its processes is sampled (tests/test_network.py).
    returncode, stderr, seen = run_watching_sockets(
        [*tiny_args(tiny_model, yes_data, run_dir), "steps=4", "max_staleness=1", "learner.num_ranks=2",
         "reward.overlong_weight=1.0", "reward.overlong_cache=4", "learner.signal=reward",
         # a second reward at weight 0 (its module found in the directory forkrl starts in): logged, not trained
         "reward.extra_fns=[tests.fixtures.peer_rewards:format_reward]", "reward.extra_weights=[0.0]",
         "tracking.completions_every=2"])
    assert returncode == 0, stderr[-3000:]
    assert_loopback_only(seen)
    # the two ranks met through a file named by the driver's pid, which the driver removed (a
    # file whose driver is alive belongs to another run on this machine)
    left = [p for p in rendezvous() - before if not psutil.pid_exists(int(p.name.split("-")[2]))]
    assert not left, left
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["policy_version"] for r in rows] == [1, 2, 3, 4]
    assert any(r["mask/scope_fraction"] > 0 for r in rows)  # something trained, so the mask checks below bite
    logged = set().union(*rows)
    names = readme_metric_names()
    assert len(names) > 30
    for name in names:  # every metric the README promises is in the run's metrics
        assert (any(k.startswith(name[:-1]) for k in logged) if name.endswith("*") else name in logged), name
    for r in rows:
        assert set(REQUIRED) <= set(r)
        if r["mask/scope_fraction"] > 0:  # top-20% of the informative tokens (ties may add a few)
            assert 0.2 <= r["mask/kept_fraction"] < 0.5
        assert r["off_policy/is_weight_mean"] <= 2.0 + 1e-6
        assert r["staleness/max"] <= 1
        # the random model rarely stops early: most responses hit 8 tokens and take the full -1
        assert r["response/truncated_fraction"] > 0.5 and r["reward/mean"] < -0.4
    assert [r["staleness/max"] for r in rows[1:]] == [1, 1, 1]  # generation really ran ahead
    assert all(r["reward/fn/format_reward"] == 0.0 and "reward/fn/starts_with" in r for r in rows)
    tables = sorted(run_dir.glob("wandb/offline-run-*/files/media/table/completions_*.table.json"))
    assert [int(t.name.split("_")[1]) for t in tables] == [2, 4]  # the driver's completions table
    # step 1 was sampled by the very weights the learner scores with: vLLM and learner agree
    if not rows[0]["train/skipped_no_signal"]:
        assert rows[0]["train/behaviour_logp_abs_diff"] < 1e-3 and rows[0]["off_policy/log_ratio_max"] < 1e-2
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["learner"]["num_ranks"] == 2 and cfg["max_staleness"] == 1
    assert (run_dir / "curves.png").stat().st_size > 1000
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline and list(offline[0].glob("*.wandb"))
    # the final policy is exported as a HF folder that loads and differs from the initial weights
    from safetensors.torch import load_file

    final = run_dir / "checkpoints" / "step_4"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_4"]
    w0, w4 = load_file(str(tiny_model / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert w0.keys() == w4.keys() and any(not (w0[k] == w4[k]).all() for k in w0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(final)
    AutoTokenizer.from_pretrained(final)


def test_loop_learns_a_trivially_learnable_reward(tiny_model, yes_data, yes_eval, tmp_path):
    """Reward 1 when the response starts with 'yes' (about 1 in 44 at random init); held-out
    prompts are evaluated before training (step 0), at step 20 and after the last step."""
    run_dir = tmp_path / "learn"
    res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=40", "prompts_per_step=8", "generation.group_size=8",
                 "generation.max_new_tokens=4", "learner.num_ranks=1", "learner.micro_batch_size=16", "learner.lr=1e-2",
                 "tracking.wandb_mode=disabled", "eval.every=20", "eval.num_prompts=32", f"eval.files={yes_eval}",
                 "eval.samples=4")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(0, 41))
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[0]["policy_version"] == 0 and evals[0]["eval/prompts"] == 32
    assert evals[-1]["eval/accuracy"] > evals[0]["eval/accuracy"] + 0.5, evals
    assert evals[-1]["eval/avg@4"] > evals[0]["eval/avg@4"]
    line = f"held-out accuracy {evals[0]['eval/accuracy']:.2f} -> {evals[-1]['eval/accuracy']:.2f}"
    assert line in res.stderr and "32 prompts" in res.stderr
    rewards = [r["reward/mean"] for r in rows[1:]]
    assert rewards[0] < 0.2
    assert max(rewards) > 0.8, rewards
    # Sampling makes the path chaotic (a float-order change moves the take-off by a few steps), so
    # the bar is a clear lift over the start, not a fixed step at which it must be complete.
    assert sum(rewards[-5:]) / 5 > 0.6, rewards


@pytest.mark.parametrize("fn, quoted", [("local_reward:broken_on_model_text", "KeyError: 'oops'"),
                                        ("rewards_dir/local_reward.py:infinite_on_model_text", "expected a finite float")])
def test_a_reward_that_keeps_failing_stops_the_run_loudly(tiny_model, yes_data, tmp_path, fn, quoted):
    """The user's reward lives where they start forkrl, as a module or a file path (no PYTHONPATH):
    it imports in the driver and in the reward actors, passes the dry call on row 1, then fails on
    what the model writes, and the run stops in one line after two steps of it."""
    source = (REPO / "tests/fixtures/my_reward.py").read_text()
    (tmp_path / "local_reward.py").write_text(source)
    (tmp_path / "rewards_dir").mkdir()
    (tmp_path / "rewards_dir/local_reward.py").write_text(source)
    run_dir = tmp_path / "broken"
    res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=6", "learner.num_ranks=1",
                 "tracking.wandb_mode=disabled", f"reward.fn={fn}", cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    shown = fn if ".py:" not in fn else f"{tmp_path / fn.split(':')[0]}:{fn.split(':')[1]}"  # made absolute
    assert last.startswith(f"forkrl: error: reward.fn={shown}: ") and quoted in last and "2 consecutive steps" in last
    rows = read_metrics(run_dir)  # the steps before the stop are kept
    assert [r["step"] for r in rows] == [1] and rows[0]["reward/excluded_fraction"] == 1.0
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("override, needle", [
    ("learner.mask.rho=1.5", "learner.mask.rho: must be in (0, 1]"),
    ("learner.nope=1", "learner.nope: unknown config key"),
    ("model.path=/nonexistent/model", "model.path='/nonexistent/model': no Hugging Face model folder"),
    ("reward.fn=not_a_module_xyz:fn", "reward.fn='not_a_module_xyz:fn': cannot import"),
    # a reward that breaks on every response fails its dry call on a real row, before Ray starts
    ("reward.fn=tests.fixtures.my_reward:broken", "reward.fn='tests.fixtures.my_reward:broken': a dry call on row 1 of "),
    ("reward.fn=tests.fixtures.peer_rewards:needs_column",
     "failed (TypeError: needs_column() missing 1 required positional argument: 'missing_column')"),
    ("reward.fn=tests.fixtures.peer_rewards:three_arguments", "three_arguments(a, b, c) fits no reward shape"),
    ("env.name=not_a_module_xyz:Env", "env.name='not_a_module_xyz:Env': cannot import"),
    ("env.name=tests.fixtures.envs:NoStep", "NoStep has no step(turn, ended) method"),
    ("env.max_turns=0", "env.max_turns: must be >= 1"),
])
def test_bad_input_fails_in_one_line_before_any_actor(tiny_model, yes_data, tmp_path, override, needle):
    run_dir = tmp_path / "bad"
    res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), override, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("forkrl: error: ") and needle in last, res.stderr[-2000:]
    assert not run_dir.exists()  # nothing started, nothing half-written


def test_malformed_data_row_names_file_and_row(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "yes"}\n{"prompt": "b"}\n')
    res = forkrl("--config", REPO / "configs/tiny.yaml", f"model.path={tiny_model}", f"data.train_files={bad}",
                 f"tracking.run_dir={tmp_path / 'run'}", timeout=120)
    assert res.returncode == 2
    assert f"{bad} row 2: missing field 'answer'" in res.stderr.strip().splitlines()[-1]


def test_a_code_row_whose_assert_checks_nothing_names_file_and_row(tiny_model, tmp_path):
    """An assert that calls only builtins would pass any code (builtins are the judge's): the run
    refuses the row before any actor starts, naming the file and row."""
    import json

    bad = tmp_path / "code.jsonl"
    rows = [{"prompt": "Write f(x) = x + 1.", "answer": json.dumps({"asserts": ["assert f(1) == 2"]})},
            {"prompt": "Write max.", "answer": json.dumps({"asserts": ["assert max([1, 5]) == 5"]})}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = forkrl("--config", REPO / "configs/tiny.yaml", f"model.path={tiny_model}", f"data.train_files={bad}",
                 "reward.fn=code", f"tracking.run_dir={tmp_path / 'run'}", timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert f"{bad} row 2: code ground truth: assert 'assert max([1, 5]) == 5' calls no name of the solution's" in last, last
    assert not (tmp_path / "run").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_to_a_local_head(tiny_model, yes_data, tmp_path):
    gcs, dash = free_port(), free_port()
    import secrets

    # Ray clusters authenticate job submission with a shared token, as a real cluster would.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "WANDB_SILENT": "true",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # a private single-machine head: its node address stays 127.0.0.1
    env.pop("RAY_ADDRESS", None)
    # Its own temp dir: the head's address file must not make later `ray.init()`s join a dead head,
    # and its processes are found by it at the end (`ray stop` would end every Ray instance on the
    # machine, other users' included).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
                            f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                            f"--dashboard-agent-listen-port={free_port()}",  # not 52365, which another head may hold
                            "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        run_dir = tmp_path / "job"
        entry = [sys.executable, "-m", "launch.cli", "train", *map(str, tiny_args(tiny_model, yes_data, run_dir)), "steps=2",
                 "learner.num_ranks=1", "tracking.wandb_mode=disabled"]
        runtime_env = {'working_dir': str(REPO), 'excludes': ['.venv', 'runs', '.git', 'bench/ablation/results']}
        for _ in range(30):  # the dashboard answers before its job agent has registered
            sub = subprocess.run([str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
                                  f"--runtime-env-json={json.dumps(runtime_env)}", "--", *entry],
                                 capture_output=True, text=True, env=env, timeout=900)
            if "No available agent to submit job" not in sub.stderr + sub.stdout:
                break
            time.sleep(2)
        assert sub.returncode == 0, (sub.stdout[-3000:], sub.stderr[-2000:])
        assert "succeeded" in sub.stdout
        assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_head(temp_dir: str) -> None:
    """Kill the processes of the Ray head started with `temp_dir` (their command lines name it)."""
    import psutil

    procs = set()
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in p.info["cmdline"] or []):
            procs.add(p)
            with contextlib.suppress(psutil.Error):  # agents and workers retitle themselves (ray::...)
                procs.update(p.children(recursive=True))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs), timeout=30)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_dynamic_sampling_kl_entropy_bonus_and_pass_at_k_end_to_end(tiny_model, yes_data, yes_eval, tmp_path):
    run_dir = tmp_path / "dyn"
    res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=3", "dynamic_sampling=true",
                 "dynamic_sampling_max_rounds=2", "learner.kl_coef=0.1", "learner.entropy_coef=0.01",
                 "learner.num_ranks=1", "tracking.wandb_mode=disabled", "eval.every=2", "eval.samples=4",
                 "eval.num_prompts=8", f"eval.files={yes_eval}")
    assert res.returncode == 0, res.stderr[-3000:]
    # a quiet console: forkrl's own lines only; the libraries' warnings and Ray's worker logs are
    # in train.log, with forkrl's lines
    console = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert console and all(re.match(r"\d\d:\d\d:\d\d forkrl: ", line) for line in console), console
    assert any(" | eta " in line for line in console) and "held-out accuracy" in console[-2]
    log = (run_dir / "train.log").read_text()
    assert "forkrl: step 3/3" in log and re.search(r"Warning|WARNING", log)
    assert "(LearnerWorker pid=" in log or "(GenerationWorker pid=" in log  # forwarded worker output
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/pass@4" in rows[0] and "eval/pass@4" not in rows[1]
    assert "eval/pass@4" in rows[2] and "eval/pass@4" in rows[3]
    rows = rows[1:]
    assert 0 <= rows[2]["eval/pass@1"] <= rows[2]["eval/pass@2"] <= rows[2]["eval/pass@4"] <= 1
    for r in rows:
        # the random tiny model almost never says 'yes': most groups are all-zero and get dropped
        assert r["dynamic/dropped_fraction"] > 0.5 and r["dynamic/rounds"] == 2
        # fill groups carry zero advantage, so under scope=informative they are out of the mask and loss
        assert (r["mask/scope_fraction"] < 1) == (r["dynamic/filled_groups"] > 0)
        # a batch of fill groups only has no token in any loss term: it is skipped, not trained on
        assert bool(r["train/skipped_no_signal"]) == (r["mask/scope_fraction"] == 0)
    trained = [r for r in rows if not r["train/skipped_no_signal"]]
    assert trained, "no step had an informative group: the KL and entropy paths were not exercised"
    for r in trained:
        assert r["losses/ref_kl"] >= 0 and r["losses/kept_entropy"] > 0
    assert trained[0]["losses/ref_kl"] < 1e-6  # the first update starts at the reference policy


def test_forkrl_eval_scores_a_model_and_compares_it(tiny_model, yes_eval, tmp_path):
    """`forkrl eval` through real vLLM actors and the reward actor: the table, the JSON, and a model
    compared with itself differing by exactly 0 (the sampling is seeded)."""
    out, copy = tmp_path / "eval.json", tmp_path / "copy"
    shutil.copytree(tiny_model, copy)  # scored separately: its own engine, the same weights
    res = subprocess.run([str(BIN / "forkrl"), "eval", "--config", str(REPO / "configs/tiny.yaml"), "--model",
                          str(tiny_model), "--data", str(yes_eval), "--samples", "4", "--compare", str(copy),
                          "--out", str(out), "reward.num_actors=2"],  # the responses split over two verifiers
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["prompts"] == 32 and report["samples"] == 4
    m = report["models"][str(tiny_model)]
    assert 0 <= m["eval/pass@1"] <= m["eval/pass@2"] <= m["eval/pass@4"] <= 1
    assert m["eval/avg@4"] == pytest.approx(m["eval/pass@1"])
    assert set(report["difference"]) == {"eval/accuracy", "eval/avg@4", "eval/pass@1", "eval/pass@2", "eval/pass@4"}
    assert report["models"][str(copy)] == m and all(v == 0 for v in report["difference"].values())
    assert "greedy" in res.stdout and "pass@4" in res.stdout and "difference" in res.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_single_gpu_mode_is_refused_without_cuda_in_one_line(tiny_model, tmp_path):
    res = forkrl("--config", REPO / "configs/single_gpu.yaml", f"model.path={tiny_model}", "model.chat_template=false",
                 "data.instruction=", f"tracking.run_dir={tmp_path / 'run'}", timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("forkrl: error: generation.sleep_mode needs a CUDA GPU"), res.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_forkrl_eval_runs_multi_turn_environments(tiny_model, yes_eval, tmp_path):
    """`forkrl eval` with env.name set: every greedy answer is a multi-turn trajectory (the scripted
    environment answers two turns with a tool observation), and the tool figures are reported."""
    out = tmp_path / "eval.json"
    res = subprocess.run([str(BIN / "forkrl"), "eval", "--config", str(REPO / "configs/tiny.yaml"), "--model",
                          str(tiny_model), "--data", str(yes_eval), "--out", str(out),
                          "env.name=tests.fixtures.envs:Scripted", "env.max_turns=3", "env.max_turn_tokens=6",
                          "eval.max_new_tokens=24"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(out.read_text())["models"][str(tiny_model)]
    assert m["eval/tool_call_rate"] == 1.0  # each trajectory got the scripted tool observations
    assert 0 <= m["eval/accuracy"] <= 1
