"""How the serving commands show their results: rich tables, JSON and CSV on stdout, notes on stderr.

Each function takes what the library returned and prints it; none computes anything. Heavy imports (pandas, rich
tables) happen inside the functions, so importing this module keeps ``embedrec --help`` instant.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from embedrec.cli.common import console, err_console

if TYPE_CHECKING:
    import pandas as pd

    from embedrec.recommender import Recommender
    from embedrec.serving import BatchSummary, PredictSummary

MAX_CANDIDATES = 50  # titles listed when --movie words match several movies


def clean(value: Any) -> Any:
    """A JSON-safe scalar: NaN / NA become null, numpy scalars plain Python."""
    if value is None:
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def notes(items: Iterable[tuple[str, str]]) -> None:
    """("note" | "warning", message) pairs from the library, one yellow line each on stderr."""
    for level, text in items:
        err_console.print(f"[yellow]{level}:[/] {text}", highlight=False)


def movie_label(rec: Recommender, movie_id: int) -> str:
    """``" (Title, 1995)"`` for a known movie, ``" (Title)"`` when its year is unknown, ``""`` for an unknown id."""
    idx = int(rec.movie_vocab.indices([movie_id])[0])
    if idx < 0:
        return ""
    row = rec.movie_records([idx])[0]
    year = row["year"]
    return f" ({row['title']}{'' if year is None else f', {int(year)}'})"


# ---------------------------------------------------------------------------------------------------------------
# recommend, similar
# ---------------------------------------------------------------------------------------------------------------
RECOMMENDATION_COLUMNS = ["movieId", "title", "year", "genres", "score", "rating"]


def recommendations(records: list[dict[str, Any]], *, fmt: str, title: str, filters: str = "") -> None:
    """A recommendation list (:meth:`~embedrec.recommender.Recommender.movie_records` with score and rating) as a
    table, JSON (a list of objects) or CSV; an empty list names the ``filters`` that emptied it (on stderr for JSON
    and CSV, whose stdout a script reads)."""
    empty = f"[yellow]no movie passes the filters{f' ({filters})' if filters else ''}[/]"
    if fmt in ("json", "csv") and not records:
        err_console.print(empty, highlight=False)
    if fmt == "json":
        console.print_json(json.dumps(records))
        return
    if fmt == "csv":  # the same columns with or without rows
        writer = csv.DictWriter(console.file, fieldnames=list(records[0]) if records else RECOMMENDATION_COLUMNS)
        writer.writeheader()
        writer.writerows(records)
        return
    if not records:
        console.print(empty, highlight=False)
        return
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for col, justify in (
        ("#", "right"),
        ("movieId", "right"),
        ("title", "left"),
        ("year", "right"),
        ("genres", "left"),
        ("score", "right"),
        ("rating", "right"),
    ):
        out.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, r in enumerate(records, 1):
        out.add_row(*_movie_cells(i, r), f"{r['score']:.3f}", "" if r["rating"] is None else f"{r['rating']:.2f}")
    console.print(out)


def batch_summary(summary: BatchSummary, *, filters: str = "") -> None:
    """What a batch wrote; when no user got a movie, the ``filters`` that emptied every list."""
    if summary.n_unknown:
        err_console.print(
            f"[yellow]note:[/] {summary.n_unknown:,} unknown user id(s) skipped, e.g. {summary.first_unknown}",
            highlight=False,
        )
    err_console.print(
        f"wrote top {summary.k} for {summary.n_users:,} users ({summary.n_rows:,} rows) to {summary.output}",
        highlight=False,
    )
    if summary.n_users and not summary.n_rows:
        err_console.print(
            f"[yellow]no movie passes the filters for any user{f' ({filters})' if filters else ''}[/]",
            highlight=False,
        )


def similar(table: pd.DataFrame, *, movie_id: int, title: Any, json_out: bool) -> None:
    records = [
        {
            "movieId": clean(r.movie_id),
            "title": clean(r.title),
            "year": clean(r.year),
            "genres": clean(r.genres),
            "similarity": clean(r.similarity),
        }
        for r in table.itertuples(index=False)
    ]
    if json_out:
        console.print_json(json.dumps({"movieId": movie_id, "title": clean(title), "similar": records}))
        return
    from rich.table import Table

    out = Table(title=f"Nearest to {title} ({movie_id}) by embedding cosine", title_justify="left")
    for col in ("#", "movieId", "title", "year", "genres", "similarity"):
        out.add_column(col, justify="left" if col in ("title", "genres") else "right")
    for i, r in enumerate(records, 1):
        out.add_row(*_movie_cells(i, r), f"{r['similarity']:.3f}")
    console.print(out)


def candidates(found: pd.DataFrame, query: str, *, json_out: bool) -> None:
    """The titles an ambiguous ``--movie`` matched (at most :data:`MAX_CANDIDATES`)."""
    records = [
        {"movieId": clean(r.movie_id), "title": clean(r.title), "year": clean(r.year)}
        for r in found.head(MAX_CANDIDATES).itertuples(index=False)
    ]
    if json_out:
        console.print_json(json.dumps({"query": query, "candidates": records, "n_candidates": len(found)}))
        return
    console.print(f"{len(found)} titles match {query!r}:", highlight=False)
    for r in records:
        year = "" if r["year"] is None else f" ({r['year']})"
        console.print(f"  {r['movieId']:>8}  {r['title']}{year}", highlight=False)
    if len(found) > len(records):
        console.print(f"  ... and {len(found) - len(records)} more", highlight=False)


# ---------------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------------
def prediction(rec: Recommender, user: int, movie: int, rating: float, *, json_out: bool) -> None:
    if json_out:
        console.print_json(json.dumps({"userId": user, "movieId": movie, "rating": rating}))
        return
    console.print(
        f"user {user}, movie {movie}{movie_label(rec, movie)}: predicted rating [bold]{rating:.2f}[/]", highlight=False
    )


def predictions(summary: PredictSummary, *, output: Any, json_out: bool) -> None:
    """The scored pairs (to stdout when there is no ``--output``) and a one-line count on stderr."""
    if output is None:
        summary.table.to_csv(console.file, index=False)
    n_ok = summary.n_pairs - summary.n_unknown
    if json_out and output is not None:
        console.print_json(
            json.dumps(
                {"n_pairs": summary.n_pairs, "n_predicted": n_ok, "n_unknown": summary.n_unknown, "output": str(output)}
            )
        )
        return
    err_console.print(
        f"scored {n_ok:,} of {summary.n_pairs:,} pairs"
        + (
            f"; {summary.n_unknown:,} left empty (an unknown or non-integer id: see the reason column)"
            if summary.n_unknown
            else ""
        )
        + (f"; written to {output}" if output else ""),
        highlight=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------
def evaluation(
    result: dict[str, Any], *, ks: list[int], split: str, relevance: float, ranking: str, json_out: bool
) -> None:
    """The metrics table (one row per metric, one column per model or baseline) and the RMSE lift line."""
    if json_out:
        from embedrec.artifacts import json_text

        console.print_json(json_text(result))
        return
    console.print(_evaluation_table(result, ks=ks, split=split, relevance=relevance, ranking=ranking))
    base = result.get("baselines", {}).get("bias", {})
    if "rmse" in base:
        lift = (base["rmse"] - result["rmse"]) / base["rmse"]
        console.print(
            f"RMSE {result['rmse']:.4f} vs the user + movie bias baseline {base['rmse']:.4f}: "
            f"{'better' if lift > 0 else 'worse'} by {abs(lift):.1%}",
            highlight=False,
        )


def _evaluation_table(result: dict[str, Any], *, ks: list[int], split: str, relevance: float, ranking: str) -> Any:
    from rich import box
    from rich.table import Table

    from embedrec.metrics import RANKING_METRICS

    columns: list[tuple[str, dict[str, Any]]] = [("model", result)]
    # short headers and a light box keep all nine columns inside an 80-column terminal or CI log
    columns += [(name.replace("_only", ""), m) for name, m in result.get("variants", {}).items()]
    labels = {"global_mean": "mean", "bias": "bias", "popular": "pop", "top_rated": "rated", "ease": "EASE"}
    columns += [(labels.get(name, name), m) for name, m in result.get("baselines", {}).items()]
    sampled = f" (a seeded sample of --max-users {result['max_users']:,})" if result.get("max_users") else ""
    stages = result.get("scoring", "every movie")
    variant_users = {m.get("n_users") for m in result.get("variants", {}).values()}
    variant_note = (
        f" (on {variant_users.pop():,} sampled users)"
        if len(variant_users) == 1 and variant_users != {result.get("n_users")}
        else ""
    )
    table = Table(
        title=f"{split} split, {result.get('n_users', 0):,} users ranked{sampled} (relevant: rating >= "
        f"{relevance:g}; candidates: every movie not rated in an earlier split). The model ranks by "
        f"{ranking}; scored: {stages}.",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption=f"rating / watch: the model ranking by one output alone{variant_note}. "
        "Baselines on the same split: mean "
        "(global mean), bias (user + movie), pop (most popular), rated (top rated, Bayesian "
        "average), EASE (item-item, closed form)",
        caption_justify="left",
    )
    table.add_column("metric", style="bold", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right", style="green" if name == "model" else None, no_wrap=True)
    for metric in ["rmse", "mae"] + [f"{m}@{k}" for k in ks for m in RANKING_METRICS]:
        cells = [f"{m[metric]:.4f}" if metric in m else ("skip" if "skipped" in m else "") for _, m in columns]
        table.add_row(metric, *cells)
    skipped = [f"{name}: {m['skipped']}" for name, m in columns if "skipped" in m]
    if skipped:
        table.caption = f"{table.caption}; " + "; ".join(skipped)
    return table


def _movie_cells(rank: int, r: dict[str, Any]) -> list[str]:
    """The rank and movie columns every result table starts with: #, movieId, title, year, genres."""
    year = "" if r["year"] is None else str(r["year"])
    return [str(rank), str(r["movieId"]), str(r["title"]), year, str(r["genres"])]
