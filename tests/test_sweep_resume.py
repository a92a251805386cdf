"""A sweep killed mid-trial (SIGKILL: no cleanup runs) and started again continues its study: completed trials
survive, the killed one ends up FAILED (heartbeat) and its values are tried again, and the study reaches n_trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from optuna.trial import TrialState

from tests.conftest import REPO
from tests.test_sweep import LR, TINY_OVERRIDES, load_study, write_sweep


def test_killed_sweep_continues_without_losing_trials(tmp_path: Path) -> None:
    # 3 trials of 6 epochs (each epoch takes 0.2-0.5 s: a trial outlives the kill below on a fast machine too);
    # heartbeats every second, stale 2 s after the last one.
    config = write_sweep(tmp_path, n_trials=3, pruner={"kind": "none"},
                         heartbeat={"interval": 1, "grace_period": 2, "max_retry": 1},
                         overrides=_overrides(tmp_path, **{"trainer.max_epochs": 6}))
    command = [sys.executable, "-m", "recipes", "sweep", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: one thread is as fast, and robust to a busy CPU
    log = tmp_path / "first_run.log"
    with log.open("w") as out:
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            # kill during trial 2, once it trains (its run dir gets TensorBoard events at fit start, after the trial's
            # first heartbeat); not later: with 2 epochs a trial finished within the second this waited before
            _wait_for(lambda: any((tmp_path / "tb_logs" / "tiny_sweep" / "trial_2").glob("events.*")), first, log)
            time.sleep(0.2)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    before = load_study(tmp_path).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING], log.read_text()
    killed = before[2]
    time.sleep(2.5)  # past the grace period, however fast the restart: the killed trial's heartbeat is overdue

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 of 3 trials finished, running 1" in second.stdout
    after = load_study(tmp_path).get_trials()
    # completed trials survive unchanged, the killed one is FAILED (never RUNNING forever)
    assert [(t.number, t.state, t.value, t.params) for t in after[:2]] == \
        [(t.number, t.state, t.value, t.params) for t in before[:2]]
    assert after[2].state == TrialState.FAIL
    # its values were queued again and completed, so the study reached n_trials finished trials
    assert len(after) == 4 and after[3].state == TrialState.COMPLETE
    assert after[3].params == killed.params and after[3].params[LR] == killed.params[LR]
    assert after[3].system_attrs.get("failed_trial") == killed.number
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3
    assert "study tiny_sweep: 4 trials (3 complete, 1 fail)" in second.stdout


def _overrides(tmp_path: Path, **changes: object) -> dict[str, object]:
    return {**TINY_OVERRIDES, "data.init_args.cache_dir": str(tmp_path / "cache"), **changes}


def _wait_for(condition: object, process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended before trial 2 started:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"trial 2 did not start within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
