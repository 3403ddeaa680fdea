"""The run directory's files under failure: atomic commits and pruning, torn metrics, the driver's
lock, fsyncs, storage every node shares, and how wandb decides to go online."""
import json
import os
import subprocess

import pytest

from launch.errors import ConfigError
from launch.resume import checkpoint_tmp, commit_checkpoint
from launch.tracking import RunExists, check_fresh
from tests.test_e2e import REPO

def test_commit_is_atomic_points_latest_and_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        tmp = checkpoint_tmp(tmp_path, step)
        (tmp / "driver.json").write_text("{}")
        commit_checkpoint(tmp_path, tmp, step, keep=2)
    state = tmp_path / "state"
    assert sorted(p.name for p in state.iterdir()) == ["latest", "step_4", "step_6"]
    assert (state / "latest").read_text() == "step_6"
    checkpoint_tmp(tmp_path, 8)  # a crash while step 8 is written: latest still names step 6
    assert (state / "latest").read_text() == "step_6" and not (state / "step_8").exists()


def test_a_failed_pointer_write_never_costs_the_checkpoint_it_points_to(tmp_path, monkeypatch):
    """The disk fills while `latest` is rewritten after step 4: latest still names step 2. The run
    resumes from step 2 and checkpoints step 3 with keep=1: step 3 (now latest) survives, and so
    does step 4, newer than latest; only step 2 goes."""
    import errno

    import launch.resume as resume

    def commit(step):
        tmp = checkpoint_tmp(tmp_path, step)
        (tmp / "driver.json").write_text("{}")
        return commit_checkpoint(tmp_path, tmp, step, keep=1)

    commit(2)

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(resume, "write_atomic", full_disk)
        with pytest.raises(OSError):
            commit(4)
    state = tmp_path / "state"
    assert (state / "latest").read_text() == "step_2" and (state / "step_4").is_dir()
    commit(3)
    assert (state / "latest").read_text() == "step_3"
    assert sorted(p.name for p in state.iterdir()) == ["latest", "step_3", "step_4"]


def test_a_torn_metrics_tail_is_cut_back_and_a_damaged_middle_refused(tmp_path, caplog):
    from launch.tracking import RunTracker

    path = tmp_path / "metrics.jsonl"
    good = "".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(4))
    for tail in ('{"step": 4, "x": 4', "\0" * 4096, '{"step": 4, "x"\0\0\0\0'):  # disk full; NUL-filled after a crash
        path.write_text(good + tail)
        with caplog.at_level("WARNING"):
            rows = RunTracker._truncate(path, last_step=2)
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
        if "{" in tail:
            assert "torn" in caplog.text
    path.write_text(good[:30] + "garbage\n" + good)
    with pytest.raises(ConfigError, match=r"metrics.jsonl line 2 is not JSON and 4 line\(s\) follow it"):
        RunTracker._truncate(path, last_step=2)


def test_a_second_driver_is_refused_while_the_first_holds_the_run_and_not_after_it_died(tmp_path):
    import sys

    from launch.tracking import RunLock, RunLocked

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from pathlib import Path; from launch.tracking import RunLock; "
                               "l = RunLock(Path(sys.argv[2])).__enter__(); print('held', flush=True); time.sleep(600)",
                               str(REPO), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"being written by another forkrl driver \(pid {holder.pid} on "):
            RunLock(tmp_path / "run").__enter__()
    finally:
        holder.kill()  # a driver that dies: the kernel drops its lock
        holder.wait()
    with RunLock(tmp_path / "run"):
        pass


def test_atomic_writes_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    from launch import atomic

    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    atomic.write_atomic(tmp_path / "latest", "step_2")
    assert len(synced) == 2  # the file, then its folder
    tmp = checkpoint_tmp(tmp_path, 3)
    (tmp / "zero").mkdir()
    (tmp / "zero" / "shard.pt").write_text("x")
    synced.clear()
    monkeypatch.setattr("launch.resume.fsync_tree", atomic.fsync_tree)
    commit_checkpoint(tmp_path, tmp, 3, keep=1)
    assert len(synced) >= 5  # shard, zero/, the checkpoint folder, state/ after the rename, latest


def test_check_fresh_refuses_a_directory_holding_a_run(tmp_path):
    check_fresh(tmp_path / "new")
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunExists, match="--resume"):
        check_fresh(tmp_path)


def test_a_run_directory_not_shared_by_every_node_is_named_by_rank_and_node(tmp_path):
    """storage_problem: a rank that cannot write, one that does not see the driver's mark, and one
    whose mark the driver does not see each give one line naming the rank, its node and the fix."""
    from launch.resume import storage_problem

    folder = tmp_path / ".storage_check"
    folder.mkdir()
    (folder / "rank0").write_text("t")
    ok = {"node": "10.0.0.1", "error": "", "saw_driver": True}
    assert storage_problem(tmp_path, folder, "t", [ok]) is None
    bad_write = {"node": "10.0.0.2", "error": "PermissionError: [Errno 13]", "saw_driver": False}
    msg = storage_problem(tmp_path, folder, "t", [ok, bad_write])
    assert msg.startswith(f"learner rank 1 on node 10.0.0.2 cannot write the run directory {tmp_path} (PermissionError")
    assert "shared storage" in msg
    blind = {"node": "10.0.0.3", "error": "", "saw_driver": False}
    assert storage_problem(tmp_path, folder, "t", [ok, blind]).startswith(
        "learner rank 1 on node 10.0.0.3 does not see the files the driver writes")
    assert storage_problem(tmp_path, folder, "t", [ok, ok]).startswith(
        "the driver does not see what learner rank 1 on node 10.0.0.1 wrote")  # its own disk: no rank1 mark here


def test_wandb_auto_goes_online_with_any_wandb_login_and_says_why_when_not(tmp_path, monkeypatch, caplog):
    from launch.tracking import wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with caplog.at_level("WARNING"):
        assert wandb_mode("auto") == "offline"
    assert "no WANDB_API_KEY and no `wandb login` entry" in caplog.text
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_mode("auto") == "online"  # what `wandb login` leaves behind
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode("auto") == "offline"  # credentials for another host
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode("auto") == "online" and wandb_mode("disabled") == "disabled"


def test_a_completions_table_goes_to_wandb_every_n_steps(tmp_path):
    """Real wandb, offline: the table's file is in the run's wandb folder at steps 2 and 4 only,
    with the step's responses as rows."""
    from actors.types import Prompt, RolloutBatch
    from launch.records import write_records
    from launch.tracking import RunTracker

    tracker = RunTracker(tmp_path / "run", {"a": 1}, "t", "forkrl-test", "offline", completions_every=2,
                         completions_rows=3)
    for step in range(1, 5):
        texts = [f"r{step}-{i}" for i in range(5)]
        batch = RolloutBatch([Prompt(0, [1], "a")], 5, [[2]] * 5, [[-0.1]] * 5, texts, [True] * 5, 0, 0.0)
        rows = [{"step": step, "prompt": f"q{i}", "response": None, "answer": "a", "reward": 1.0,
                 "status": "correct", "policy_version": 0, "fill": False, "prompt_id": i, "_src": (0, i)}
                for i in range(5)]
        tracker.log({"step": step, "reward/mean": 1.0})
        keep = tracker.completions_due(step)  # what the driver does, the writer being a Ray task there
        kept = write_records(tracker.records_path(step), rows, keep, batch)
        if keep:
            tracker.log_completions(step, kept)
    tracker.close()
    tables = sorted((tmp_path / "run").glob("wandb/offline-run-*/files/media/table/completions_*.table.json"))
    assert [int(t.name.split("_")[1]) for t in tables] == [2, 4]
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "prompt", "response", "answer", "reward", "status"]
    assert [row[2] for row in table["data"]] == ["r2-0", "r2-1", "r2-2"]  # completions_rows of them
    assert len((tmp_path / "run/rollouts/step_1.jsonl").read_text().splitlines()) == 5  # every response, every step
