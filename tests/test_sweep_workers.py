"""Two sweep workers sharing one Optuna storage finish a study with no duplicated or lost trials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

from tests.conftest import REPO
from tests.test_sweep import TINY_OVERRIDES, load_study, write_sweep


def test_two_workers_share_one_study(tmp_path: Path) -> None:
    n_trials = 4
    config = write_sweep(tmp_path, n_trials=n_trials, pruner={"kind": "none"},
                         overrides={**TINY_OVERRIDES, "trainer.max_epochs": 1,
                                    "data.init_args.cache_dir": str(tmp_path / "cache")})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen([sys.executable, "-m", "recipes", "sweep", "--config", str(config), "--seed", str(seed)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(out[-2000:] for out in outputs)

    trials = load_study(tmp_path).get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no trial recorded twice
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]  # none lost or stuck
    # each worker stops once the study has n_trials finished; one may have had a trial in flight at that moment
    assert n_trials <= len(trials) <= n_trials + 1
    run_dirs = sorted(p.name for p in (tmp_path / "tb_logs" / "tiny_sweep").glob("trial_*"))
    assert run_dirs == sorted(f"trial_{n}" for n in numbers)  # one run dir per trial, none overwritten
