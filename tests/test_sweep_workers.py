"""Two sweep workers sharing one Optuna storage finish a study with no duplicated or lost trials: SQLite, and a real
PostgreSQL server when ``POCKETBERT_TEST_POSTGRES_URL`` names one (``.ci/run`` starts a throwaway server)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import REPO
from tests.test_sweep import TINY_OVERRIDES, write_sweep

POSTGRES_URL = os.environ.get("POCKETBERT_TEST_POSTGRES_URL", "")
NO_POSTGRES = ("POCKETBERT_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against (.ci/run starts a "
               "throwaway one when PostgreSQL is installed; by hand: .ci/postgres.sh .venv/bin/pytest "
               "tests/test_sweep_workers.py)")


@pytest.mark.parametrize("backend", [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES)),
])
def test_two_workers_share_one_study(tmp_path: Path, backend: str) -> None:
    n_trials = 4
    fields: dict[str, object] = {}
    name = "tiny_sweep"
    if backend == "postgresql":
        name = f"tiny_sweep_{uuid.uuid4().hex[:8]}"  # the database outlives the test: a study of its own
        fields["storage"] = POSTGRES_URL
    config = write_sweep(tmp_path, name=name, n_trials=n_trials, pruner={"kind": "none"},
                         overrides={**TINY_OVERRIDES, "trainer.max_epochs": 1,
                                    "data.init_args.cache_dir": str(tmp_path / "cache")}, **fields)
    storage = POSTGRES_URL if backend == "postgresql" else f"sqlite:///{tmp_path / 'tb_logs' / name / 'study.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # started together: both race to create the storage's schema and the study
    workers = [
        subprocess.Popen([sys.executable, "-m", "recipes", "sweep", "--config", str(config), "--seed", str(seed)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(out[-2000:] for out in outputs)

    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        numbers = [t.number for t in trials]
        assert len(numbers) == len(set(numbers))  # no trial recorded twice
        assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]  # none lost or stuck
        # each worker stops once the study has n_trials finished; one may have had a trial in flight at that moment
        assert n_trials <= len(trials) <= n_trials + 1
        run_dirs = sorted(p.name for p in (tmp_path / "tb_logs" / name).glob("trial_*"))
        assert run_dirs == sorted(f"trial_{n}" for n in numbers)  # one run dir per trial, none overwritten
        assert all(0.0 <= t.value <= 1.0 for t in trials if t.value is not None)  # a val_macro_f1 each
        if backend == "postgresql":
            assert not list(tmp_path.rglob("*.db"))  # the study lived in PostgreSQL, not in a SQLite file
            password = sqlalchemy.engine.make_url(POSTGRES_URL).password
            for out in outputs:  # the workers print where the study is, never the password
                assert f"storage {sqlalchemy.engine.make_url(POSTGRES_URL).render_as_string()}" in out, out[-2000:]
                assert not password or password not in out
    finally:
        if backend == "postgresql":
            optuna.delete_study(study_name=name, storage=storage)


RACE = """
import sys, time
from pathlib import Path
from recipes.sweep import rdb_storage
folder, me, racers, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for round_number in range(rounds):
    (folder / f"ready-{round_number}-{me}").touch()
    deadline = time.time() + 60
    while len(list(folder.glob(f"ready-{round_number}-*"))) < racers:  # a barrier: then all open at once
        if time.time() > deadline:
            sys.exit(f"round {round_number}: another racer never arrived (it failed)")
        time.sleep(0.001)
    rdb_storage(f"sqlite:///{folder / f'race{round_number}.db'}", engine_kwargs={"connect_args": {"timeout": 60}})
"""


def test_workers_racing_to_create_a_new_storage_all_open_it(tmp_path: Path) -> None:
    # Without the retry in rdb_storage, plain RDBStorage lost this race in most rounds here ("table
    # alembic_version already exists"); with it every racer opens every fresh storage.
    racers, rounds = 4, 6
    processes = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(me), str(racers), str(rounds)],
                                  cwd=REPO, stderr=subprocess.PIPE, text=True) for me in range(racers)]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * racers, "\n".join(e[-800:] for e in errors)
    for round_number in range(rounds):
        assert optuna.storages.RDBStorage(f"sqlite:///{tmp_path / f'race{round_number}.db'}").get_all_studies() == []
