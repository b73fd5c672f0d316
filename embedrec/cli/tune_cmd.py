"""``embedrec tune``: parse options, call :func:`embedrec.tune.tune`, render a line per trial with rich.

Optuna, JAX and Flax load inside the command, so ``embedrec --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from embedrec.cli.common import (
    CoordinatorOpt,
    DistributedOpt,
    JoinTimeoutOpt,
    JsonOpt,
    NumProcessesOpt,
    ProcessIdOpt,
    WorkdirOpt,
    app,
    cluster_of,
    console,
    handle_errors,
)
from embedrec.tune import PRESET_MARGIN_Z, TrialOutcome, TuneCallbacks  # light: Optuna loads inside the search
from embedrec.workdir import resolve_workdir

_SHORT = {
    "lr": "lr",
    "weight_decay": "wd",
    "embedding_dim": "dim",
    "dropout": "drop",
    "batch_size": "batch",
    "patience": "pat",
    "negatives": "neg",
    "watch_weight": "ww",
}


def _params_text(params: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.1e}" if 0 < value < 0.01 else f"{value:.3g}"
        return str(value)

    return " ".join(f"{_SHORT.get(k, k)} {fmt(v)}" for k, v in params.items())


def _metrics_text(metrics: dict[str, float]) -> str:
    parts = []
    if "val_ndcg@10" in metrics:
        parts.append(f"NDCG@10 {metrics['val_ndcg@10']:.4f}")
    if "val_rmse" in metrics:
        parts.append(f"RMSE {metrics['val_rmse']:.4f}")
    return "  ".join(parts)


class _TuneView(TuneCallbacks):
    """A progress bar for the search (time or trials) and a line per finished trial."""

    def __init__(self, *, quiet: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.task: Any = None
        self.budget_s: float | None = None
        self.n_trials: int | None = None
        self.done = 0
        self.started = 0.0
        self.max_epochs = 0
        self.best = "no finished trial yet"

    def on_start(self, info: dict[str, Any]) -> None:
        import time

        self.started = time.monotonic()
        self.budget_s, self.n_trials, self.max_epochs = info["budget_s"], info["n_trials"], info["max_epochs"]
        if self.quiet:
            return
        previous = info["previous_trials"]
        limits = [
            f"{info['budget_s'] / 60:g} min" if info["budget_s"] else "",
            f"{info['n_trials']} trials" if info["n_trials"] else "",
        ]
        console.print(
            f"tuning {info['objective']} on the validation split: study {info['study_name']!r} in "
            f"{info['study']}"
            + (f" (continuing after {previous} trials)" if previous else "")
            + f"; up to {' / '.join(x for x in limits if x)}, {info['max_epochs']} epochs per trial",
            highlight=False,
        )
        total = self.budget_s if self.budget_s else float(self.n_trials or 1)
        self.task = self.progress.add_task("search", total=total, status="")
        self.progress.start()

    def _advance(self) -> None:
        import time

        if self.task is None:
            return
        completed = (time.monotonic() - self.started) if self.budget_s else float(self.done)
        self.progress.update(self.task, completed=completed)

    def on_trial_start(self, number: int, params: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"trial {number}", status=f"starting; best: {self.best}")
            self._advance()

    def on_epoch(self, number: int, record: dict[str, Any], value: float) -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                status=f"epoch {record['epoch']}/{self.max_epochs} {_metrics_text(record)}; best: {self.best}",
            )
            self._advance()

    def on_trial_end(self, outcome: TrialOutcome) -> None:
        self.done += 1
        if outcome.best_number is not None:
            self.best = f"{outcome.best_value:.4f} (trial {outcome.best_number})"
        self._advance()
        if self.quiet:
            return
        if outcome.state == "complete":
            how = f"[green]done[/] ({outcome.epochs} epochs)"
            what = _metrics_text(outcome.metrics) + ("  [bold green]new best[/]" if outcome.is_best else "")
        elif outcome.state == "pruned":
            how, what = f"[yellow]{outcome.reason}[/]", ""
        elif "time budget" in outcome.reason:
            how, what = f"[red]stopped[/] ({outcome.reason})", ""
        else:
            how, what = "[red]failed[/]", outcome.reason
        self.progress.console.print(f"trial {outcome.number:>3}  {how}  {what}  {outcome.seconds:.0f}s")
        self.progress.console.print(f"    [dim]{_params_text(outcome.params)}[/]", highlight=False)

    def stop(self) -> None:
        if self.task is not None:  # started: stopping a bar that never started printed a blank line before an error
            self.progress.stop()


@app.command("tune")
@handle_errors
def tune_cmd(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Prepared data folder \\[default: <workdir>/data].", show_default=False),
    ] = None,
    workdir: WorkdirOpt = None,
    preset: Annotated[str, typer.Option("--preset", help="The preset to search around (default or seed).")] = "default",
    objective: Annotated[
        str,
        typer.Option(
            "--objective", help="ndcg@10 (val NDCG@10), rmse (val RMSE) or both (val NDCG@10 - 0.35 x val RMSE)."
        ),
    ] = "ndcg@10",
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Time for the search, e.g. 90s, 10m, 1h \\[default: 10m unless --trials is given].",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", help="Trials to run in this call at most.", show_default=False)
    ] = None,
    max_epochs: Annotated[
        int | None,
        typer.Option(
            "--max-epochs",
            help="Epochs per trial at most (early stopping and pruning end most sooner) \\[default: the preset's].",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler and of every trial's training.")] = 42,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Config file to write \\[default: <workdir>/tuned.toml].", show_default=False),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start this study (--preset and --objective) over: delete its trials and trial folders first; the "
            "work folder's other studies are kept. In a distributed tune, give it to every process.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the closing summary.")] = False,
    distributed: DistributedOpt = False,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
    join_timeout: JoinTimeoutOpt = 300,
    as_json: JsonOpt = False,
) -> None:
    """Search hyperparameters on the validation split (Optuna, resumable); writes the best for train --config."""
    import optuna

    from embedrec.tune import DEFAULT_BUDGET_S, parse_budget, tune

    budget_s = parse_budget(budget) if budget is not None else (None if trials is not None else DEFAULT_BUDGET_S)
    cluster = cluster_of(distributed, coordinator, num_processes, process_id, join_timeout)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the view below reports each trial
    view = _TuneView(quiet=quiet or as_json)
    try:
        result = tune(
            data,
            workdir=resolve_workdir(workdir),
            out=out,
            preset=preset,
            objective=objective,
            budget_s=budget_s,
            n_trials=trials,
            max_epochs=max_epochs,
            seed=seed,
            callbacks=view,
            cluster=cluster,
            restart=restart,
        )
    finally:
        view.stop()
    if as_json:
        from embedrec.artifacts import json_text

        console.print_json(
            json_text(
                {
                    "config": str(result.config_path),
                    "command": result.command,
                    "study": str(result.study_path),
                    "study_name": result.study_name,
                    "objective": result.objective,
                    "best": {
                        "trial": result.best_number,
                        "value": result.best_value,
                        "metrics": result.best_metrics,
                        "settings": result.settings,
                        "run_dir": str(result.best_run_dir) if result.best_run_dir else None,
                    },
                    "trials": {"this_call": result.n_this_call, **result.counts},
                    "rmse_ceiling": result.rmse_ceiling,
                    "preset_trial": result.preset_number,
                    "vs_preset": result.vs_preset,
                }
            )
        )
        return
    c = result.counts
    console.print(
        f"[green]tuned[/]: {result.n_this_call} trials in this call, {c['complete']} finished, "
        f"{c['pruned']} pruned, {c['failed']} stopped in the study so far"
    )
    console.print(f"best: trial {result.best_number}, val {_metrics_text(result.best_metrics)}", highlight=False)
    ceiling, best_rmse = result.rmse_ceiling, result.best_metrics.get("val_rmse")
    if ceiling is not None and best_rmse is not None and not best_rmse < ceiling:
        console.print(
            f"[yellow]no finished trial kept val RMSE below {ceiling:.4f} (1% under the bias baseline's); "
            "this one ranks best[/]",
            highlight=False,
        )
    if result.preset_number is not None and result.best_number == result.preset_number:
        console.print(
            f"no trial beat the preset (trial {result.preset_number}) on val by {PRESET_MARGIN_Z:g} standard errors: "
            "its settings are written",
            highlight=False,
        )
    elif result.vs_preset is not None:
        console.print(
            f"it beats the preset (trial {result.preset_number}) on val by {result.vs_preset['z']:.1f} standard errors",
            highlight=False,
        )
    console.print(
        f"settings written to {result.config_path}; train with:\n  [bold]{result.command}[/]", highlight=False
    )
