"""``embedrec train`` and ``embedrec info``: parse options, call :mod:`embedrec.runs`, render progress with rich.

JAX and Flax load inside the commands, so ``embedrec --help`` and ``embedrec train --help`` stay instant.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    err_console,
    handle_errors,
)
from embedrec.errors import ConfigError, ResumeChangesSettings, SettingError
from embedrec.workdir import latest_run, resolve_workdir

if TYPE_CHECKING:
    from embedrec.runs import RunResult

_HP = "Hyperparameters (override the preset)"


def _parse_hidden(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(x) for x in value.replace(" ", "").split(",") if x)
    except ValueError:
        raise ConfigError(f"--hidden: expected layer sizes like 64,10, got {value!r}") from None
    if not sizes:
        raise ConfigError("--hidden: give at least one layer size, like 64,10")
    return sizes


class _Progress:
    """Renders the training loop's callbacks: a summary, a bar per epoch, a line per epoch."""

    def __init__(self, *, quiet: bool, preset: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.quiet = quiet
        self.preset = preset
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[speed]:,.0f} samples/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.task: Any = None
        self.epoch = 0

    def on_start(self, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        from rich.table import Table

        table = Table(title=f"Model: embedding-concat ({self.preset})", title_justify="left")
        table.add_column("Layer (type)")
        table.add_column("Output Shape")
        table.add_column("Param #", justify="right")
        for layer, shape, n in info["summary"]:
            table.add_row(layer, shape, f"{n:,}")
        console.print(table)
        console.print(
            f"Total params: [bold]{info['n_params']:,}[/]   train {info['n_train']:,} / val "
            f"{info['n_val']:,} ratings, {info['steps_per_epoch']:,} steps per epoch on "
            f"{', '.join(info['devices'])}"
        )
        if info.get("start_epoch", 1) > 1:
            console.print(f"[cyan]resuming at epoch {info['start_epoch']}[/]")
        self.progress.start()

    def on_block(self, epoch: int, step: int, steps: int, loss: float, samples_per_s: float) -> None:
        if self.quiet:
            return
        if self.task is None or epoch != self.epoch:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.epoch = epoch
            self.task = self.progress.add_task("train", total=steps, epoch=epoch, loss=loss, speed=samples_per_s)
        self.progress.update(self.task, completed=step, loss=loss, speed=samples_per_s)

    def on_epoch(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        extra = f"  NDCG@10 {record['val_ndcg@10']:.4f}" if "val_ndcg@10" in record else ""
        speed = record["samples_per_s"]
        speed_text = f"{speed / 1000:,.0f}k/s" if speed >= 10_000 else f"{speed:,.0f}/s"
        # one line within 80 columns: train loss, then the val metrics, then time and throughput
        val = f"val RMSE {record['val_rmse']:.4f}  MAE {record['val_mae']:.4f}{extra}" if _has_val(record) else "no val"
        self.progress.console.print(
            f"epoch {record['epoch']:>3}  loss {record['train_loss']:.4f}  {val}  "
            f"{record['seconds']:.1f}s {speed_text}",
            highlight=False,
        )

    def stop(self) -> None:
        self.progress.stop()


@app.command("train")
@handle_errors
def train_cmd(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Prepared data folder \\[default: <workdir>/data; with --resume, the data the run started on].",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder \\[default: a new one under <workdir>/models].", show_default=False),
    ] = None,
    workdir: WorkdirOpt = None,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="default (measured best, with the ranking output) or seed (the original network, rating-only).",
        ),
    ] = "default",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="JSON or TOML file of hyperparameters (flag names, e.g. lr, hidden, batch-size).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the latest run (or --out RUN) from its last checkpoint.")
    ] = False,
    embedding_dim: Annotated[
        int | None, typer.Option("--embedding-dim", rich_help_panel=_HP, show_default=False)
    ] = None,
    hidden: Annotated[
        str | None,
        typer.Option("--hidden", help="Dense layer sizes, e.g. 64,10.", rich_help_panel=_HP, show_default=False),
    ] = None,
    dropout: Annotated[float | None, typer.Option("--dropout", rich_help_panel=_HP, show_default=False)] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Adam learning rate.", rich_help_panel=_HP, show_default=False)
    ] = None,
    lr_decay: Annotated[
        float | None,
        typer.Option("--lr-decay", help="Learning rate factor per epoch.", rich_help_panel=_HP, show_default=False),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", rich_help_panel=_HP, show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", rich_help_panel=_HP, show_default=False)] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help="Per-row L2 on embedding rows.", rich_help_panel=_HP, show_default=False),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            "--optimizer",
            help="rowwise_adam (row-sparse, one second "
            "moment per embedding row), lazy_adam (row-sparse) or adam "
            "(dense).",
            rich_help_panel=_HP,
            show_default=False,
        ),
    ] = None,
    negatives: Annotated[
        int | None,
        typer.Option(
            "--negatives",
            help="Sampled negatives per rating for the watch output (0 = rating only).",
            rich_help_panel=_HP,
            show_default=False,
        ),
    ] = None,
    watch_weight: Annotated[
        float | None,
        typer.Option("--watch-weight", help="Weight of the watch loss.", rich_help_panel=_HP, show_default=False),
    ] = None,
    sampling: Annotated[
        str | None,
        typer.Option("--sampling", help="uniform or popularity negatives.", rich_help_panel=_HP, show_default=False),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            "--patience",
            help="Stop after this many epochs without a better val RMSE (or, where the data turns on rmse_slack, "
            "without a better val RMSE or NDCG@10) and keep the best epoch's weights (0 = off).",
            rich_help_panel=_HP,
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel=_HP, show_default=False)] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No model summary, progress bar or epoch lines: only the closing summary."),
    ] = False,
    distributed: DistributedOpt = False,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
    join_timeout: JoinTimeoutOpt = 300,
    as_json: JsonOpt = False,
) -> None:
    """Train the embedding-concat network on prepared data; writes a run folder and makes it the latest."""
    from embedrec.config import load_config_file
    from embedrec.runs import train_run

    wd = resolve_workdir(workdir)
    overrides: dict[str, Any] = load_config_file(config) if config is not None else {}
    from_file = set(overrides)
    if "preset" in overrides and preset == "default":
        preset = str(overrides["preset"])
    flags = {
        "embedding_dim": embedding_dim,
        "hidden": _parse_hidden(hidden),
        "dropout": dropout,
        "lr": lr,
        "lr_decay": lr_decay,
        "batch_size": batch_size,
        "epochs": epochs,
        "weight_decay": weight_decay,
        "optimizer": optimizer.replace("-", "_") if optimizer else None,
        "negatives": negatives,
        "watch_weight": watch_weight,
        "sampling": sampling,
        "patience": patience,
        "seed": seed,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    overrides.update(flags)

    def as_given(setting: str) -> str:
        """A setting's name as the user gave it: its flag, else its key in --config (a flag wins over the file)."""
        if setting in flags or setting not in from_file:  # a setting not given at all: its flag, where it has one
            return "--" + setting.replace("_", "-")
        return f"--config: {config}: {setting}"

    cluster = cluster_of(distributed, coordinator, num_processes, process_id, join_timeout)

    stop = {"requested": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if stop["requested"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop["requested"] = True
        err_console.print(
            "[yellow]Ctrl-C: saving a checkpoint at the end of this block... (press again to abort without saving)[/]"
        )

    previous = signal.signal(signal.SIGINT, on_sigint)
    view = _Progress(quiet=quiet or as_json, preset=preset)
    try:
        result = train_run(
            data,
            out=out,
            workdir=wd,
            preset=preset,
            overrides=overrides,
            callbacks=view,
            resume=resume,
            stop_requested=lambda: stop["requested"],
            cluster=cluster,
        )
    except SettingError as exc:  # named as the user gave it: the flag, else the config file's key
        if exc.setting in flags or exc.setting in from_file:
            raise exc.named(as_given(exc.setting)) from None
        raise
    except ResumeChangesSettings as exc:
        raise exc.named(as_given) from None
    finally:
        view.stop()
        signal.signal(signal.SIGINT, previous)

    _print_result(result, as_json=as_json)


NO_VAL = "no val ratings to score it on (the val split is empty: prepare with more ratings or a larger --val-frac)"


def _has_val(record: dict[str, Any]) -> bool:
    """Whether an epoch record has val scores (an empty val split leaves them NaN or None)."""
    value = record.get("val_rmse")
    return value is not None and value == value


def _print_result(result: RunResult, *, as_json: bool) -> None:
    """The closing summary of a run (or, when it was interrupted, how to resume it: exit 130)."""
    if result.interrupted:
        done = result.history[-1]["epoch"] if result.history else 0
        err_console.print(
            f"[yellow]interrupted after epoch {done}; checkpoint saved in "
            f"{result.run_dir / 'checkpoints'}[/]\nresume with: [bold]embedrec train --resume "
            f"--out {result.run_dir}[/]"
        )
        raise typer.Exit(130)
    last = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
    if as_json:
        from embedrec.artifacts import json_text

        console.print_json(
            json_text(
                {
                    "run_dir": str(result.run_dir),
                    "n_params": result.n_params,
                    "best_epoch": result.best_epoch,
                    "stopped_early": result.stopped_early,
                    "ranking": result.ranking,
                    "final": last,
                    "timings": result.timings,
                    "baseline_blend": result.baseline_blend,
                    "adapted": result.adapted,
                }
            )
        )
        return
    note = f" (early stop; best weights from epoch {result.best_epoch})" if result.stopped_early else ""
    ndcg = f", val NDCG@10 {last['val_ndcg@10']:.4f}" if "val_ndcg@10" in last else ""
    if _has_val(last):
        scores = f"val RMSE {last['val_rmse']:.4f}, MAE {last['val_mae']:.4f}{ndcg}"
    else:
        scores = NO_VAL
    console.print(f"[green]trained[/] {result.n_params:,} parameters: {scores}{note}", highlight=False)
    if result.adapted:
        settings = ", ".join(f"{k} {json.dumps(v)}" for k, v in result.adapted.items() if k != "because")
        console.print(
            f"adapted to the data ({result.adapted.get('because', '')}): {settings}; a setting named in --config "
            "or a flag is never adapted",
            highlight=False,
        )
    blend = result.baseline_blend
    if blend and blend["network_share"] < 1.0:
        console.print(
            f"ratings blended with the bias baseline, network share {blend['network_share']:g} "
            f"(chosen on val: RMSE {blend['val_rmse_by_share']['1']:.4f} -> {blend['val_rmse']:.4f})"
        )
    if result.ranking.get("score") == "blend":
        from embedrec.scoring import Ranking

        console.print(
            f"recommend ranks by {Ranking.from_meta({'ranking': result.ranking}, has_watch=True).describe()} "
            f"(chosen by {result.ranking.get('chosen_by', 'val ndcg@10')})"
        )
    elif result.ranking.get("score") == "rating":
        console.print("recommend ranks by predicted rating (this model has no trained watch output)")
    if result.timings:
        console.print(_timings_text(result.timings), highlight=False)
    console.print(
        f"model: {result.run_dir}  (now the latest; next: [bold]embedrec evaluate[/], "
        "[bold]embedrec recommend --user ID[/])"
    )


_PHASES = {
    "setup_s": "setup",
    "shuffle_s": "shuffles",
    "validation_s": "validation",
    "best_copy_s": "best-epoch copies",
    "checkpoints_s": "checkpoints",
    "final_weights_s": "final weights",
    "ranking_choice_s": "ranking choice",
    "write_s": "writing the model",
}


def _timings_text(timings: dict[str, float]) -> str:
    """One line: the seconds of the epochs, then of every phase outside them, largest first."""
    outside = {name: timings[key] for key, name in _PHASES.items() if key in timings}
    parts = ", ".join(f"{name} {sec:.1f}" for name, sec in sorted(outside.items(), key=lambda kv: -kv[1]))
    return f"time: epochs {timings.get('epochs_s', 0.0):.1f} s; outside them {sum(outside.values()):.1f} s ({parts})"


@app.command("info")
@handle_errors
def info_cmd(
    model: Annotated[
        Path | None, typer.Argument(help="Run folder \\[default: the latest].", show_default=False)
    ] = None,
    workdir: WorkdirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a trained model: settings, data, parameter count, final metrics."""
    from embedrec.artifacts import load_model, read_json

    run = model if model is not None else latest_run(resolve_workdir(workdir))
    # the checks every command that uses the model makes (check_model_folder, then the weights memory-mapped with
    # numpy): a path that is no model folder, or weights missing, corrupt or unlike model.json, are one error line
    meta = load_model(Path(run)).meta
    history_path = Path(run) / "history.json"
    history = read_json(history_path) if history_path.is_file() else []
    if not isinstance(history, list):
        history = []
    n_params, metrics = meta.get("n_params"), meta.get("metrics")
    info = {
        "run_dir": str(run),
        "preset": meta.get("preset"),
        "n_params": n_params if isinstance(n_params, int) else 0,
        "model": meta["model"],
        "train": meta["train"],
        "shape": meta["shape"],
        "data": meta.get("data") or {},
        "ranking": meta.get("ranking"),
        "best_epoch": meta.get("best_epoch"),
        "epochs_run": meta.get("epochs_run", len(history)),
        "metrics": metrics if isinstance(metrics, dict) else {},
        "created": meta.get("created"),
        "schema_version": meta.get("schema_version"),
    }
    if as_json:
        from embedrec.artifacts import json_text

        console.print_json(json_text(info))
        return
    from rich.table import Table

    t = Table(title=f"Model {run}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("preset", str(info["preset"]))
    t.add_row("parameters", f"{info['n_params']:,}")
    m = info["model"]
    genres = f"{m['movie_clusters']} learned movie clusters" if m.get("movie_clusters") else m["genre_mode"]
    t.add_row(
        "network",
        f"embeddings {m['embedding_dim']}-d (genres: {genres}), hidden "
        f"{','.join(map(str, m['hidden']))}, dropout {m['dropout']}, biases {m['biases']}, "
        f"watch output {m['watch_head']}",
    )
    tr = info["train"]
    t.add_row(
        "training",
        f"{tr['optimizer']} lr {tr['lr']} (x{tr['lr_decay']}/epoch), batch {tr['batch_size']}, "
        f"epochs {info['epochs_run']}/{tr['epochs']}, weight decay {tr['weight_decay']}, "
        f"negatives {tr['negatives']}, seed {tr['seed']}",
    )
    s = info["shape"]
    d = info["data"]
    t.add_row(
        "data",
        f"{d.get('source')} ({d.get('format')}): {s['n_users']:,} users, {s['n_movies']:,} movies, "
        f"{s['n_genres']:,} genre inputs, ratings {s['rating_min']:g}..{s['rating_max']:g}; fingerprint "
        f"{d.get('fingerprint')}",
    )
    for k, v in info["metrics"].items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    t.add_row("best epoch", str(info["best_epoch"]))
    rk = info["ranking"] or {}
    score = "predicted rating" if rk.get("score") == "rating" else "watch logit"
    if rk.get("score") != "rating":
        score += f" + {rk.get('gamma', 0):g} x popularity prior" if rk.get("gamma") else ""
        score += f" + {rk.get('beta', 0):g} x rating"
    t.add_row("recommend score", score)
    t.add_row("created", str(info["created"]))
    console.print(t)
