"""`embedrec tune --distributed`: process 0 runs the study, every trial trains on both processes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli import EMBEDREC
from cluster import cluster_env, free_port

pytestmark = pytest.mark.slow


def test_a_distributed_search_trains_every_trial_on_both_processes_and_process_0_keeps_the_study(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    port = free_port()
    workdirs = [tmp_path / "w0", tmp_path / "w1"]
    procs = [
        subprocess.Popen(
            EMBEDREC
            + ["tune", "--data", str(synthetic_prepared), "--workdir", str(wd)]
            + ["--trials", "2", "--max-epochs", "1", "--json", "--distributed", "--coordinator", f"127.0.0.1:{port}"]
            + ["--num-processes", "2", "--process-id", str(i), "--join-timeout", "60"],
            env=cluster_env(1, cluster_process=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, wd in enumerate(workdirs)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in results]
    assert reports[0] == reports[1]  # process 1 ends with process 0's outcome
    assert reports[0]["trials"]["complete"] == 2
    assert (workdirs[0] / "tuned.toml").is_file() and (workdirs[0] / "tune" / "study.db").is_file()
    assert not workdirs[1].exists()  # process 1 wrote nothing


def _tune_processes(data: Path, workdirs: list[Path], extra: list[list[str]], *, script: str | None = None):
    """Two ``embedrec tune --distributed`` processes (``script``: Python run before the CLI, in each process)."""
    port = free_port()
    start = (
        ["-c", script + "\nfrom embedrec.cli import main\nmain()\n", "tune"]
        if script
        else ["-m", "embedrec.cli", "tune"]
    )
    return [
        subprocess.Popen(
            [EMBEDREC[0], *start, "--data", str(data), "--workdir", str(wd), "--json", "--distributed"]
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
            + ["--join-timeout", "60", *more],
            env=cluster_env(1, cluster_process=True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (wd, more) in enumerate(zip(workdirs, extra))
    ]


def test_restart_given_to_some_processes_only_is_refused_by_every_process(
    synthetic_prepared: Path, tmp_path: Path
) -> None:
    """Every process of a distributed tune takes the same options: ``--restart`` given to process 1 alone is
    refused on both, with one line, before anything is deleted or trained (given to all, process 0 restarts)."""
    work = tmp_path / "w0"
    procs = _tune_processes(
        synthetic_prepared, [work, tmp_path / "w1"], [["--trials", "1"], ["--trials", "1", "--restart"]]
    )
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 2 and out == "", err
        assert err.strip() == (
            "error: --restart was given to process 1 only: give every process the same options, --restart to all "
            "of them or to none (process 0 starts the study over before the first trial)"
        )
    assert not (work / "tune").exists()
    # given to every process, as every other option: process 0 starts the study over, and both train its trial
    first = subprocess.run(
        EMBEDREC
        + ["tune", "--data", str(synthetic_prepared), "--workdir", str(work), "--trials", "1", "--max-epochs", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    again = ["--trials", "1", "--max-epochs", "1", "--restart"]
    procs = _tune_processes(synthetic_prepared, [work, tmp_path / "w1"], [again, again])
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    import optuna

    study = optuna.load_study(study_name="default-ndcg@10", storage=f"sqlite:///{work / 'tune' / 'study.db'}")
    assert len(study.trials) == 1  # the first call's trial went with the restart: one trial, the new one
    assert not (tmp_path / "w1").exists()  # process 1 wrote nothing


def test_a_prepare_that_replaces_the_data_stops_a_distributed_search(synthetic_prepared: Path, tmp_path: Path) -> None:
    """A distributed trial skipped the check that the data was not prepared again since the search started: the
    processes agree with each other (``train_run``), not with the study, so after a ``prepare`` replaced the data
    folder they all see, the next trial trained on the new data in a study of the old. Process 0 now checks, every
    process leaves the trial with it before training, and both end with its one line."""
    import optuna

    data = tmp_path / "data"
    shutil.copytree(synthetic_prepared, data)
    prepare_again = (  # on process 0 (the one that reports trials): another command replaces the data meanwhile
        "from pathlib import Path\n"
        "import embedrec.cli.tune_cmd as view\n"
        "from embedrec.data import PrepareConfig, prepare_synthetic\n"
        "shown = view._TuneView.on_trial_end\n"
        "def on_trial_end(self, outcome):\n"
        "    shown(self, outcome)\n"
        "    if outcome.number == 0:\n"
        f"        prepare_synthetic(out=Path({str(data)!r}), n_users=250, n_movies=300, n_ratings=15_000, seed=1,\n"
        "                          config=PrepareConfig())\n"
        "view._TuneView.on_trial_end = on_trial_end\n"
    )
    work = tmp_path / "w0"
    small = ["--trials", "2", "--max-epochs", "1"]
    procs = _tune_processes(data, [work, tmp_path / "w1"], [small, small], script=prepare_again)
    results = [p.communicate(timeout=900) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, results)):
        assert p.returncode == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("error: " + ("process 0: " if i else "") + f"{data} was prepared again while tune ran")
        assert "trial 1 was not trained" in err and "--restart" in err
    first, second = optuna.load_study(
        study_name="default-ndcg@10", storage=f"sqlite:///{work / 'tune' / 'study.db'}"
    ).trials
    assert first.state == optuna.trial.TrialState.COMPLETE and second.state == optuna.trial.TrialState.FAIL
    assert "epochs" not in second.user_attrs  # it never trained an epoch
    assert not (work / "tune" / "models" / "default-ndcg@10" / "trial-0001").exists()
