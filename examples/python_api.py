"""The embedrec Python API end to end on a small synthetic data set.

Run it from the repository root (it takes well under a minute on a laptop)::

    python examples/python_api.py            # works in a temporary folder, deleted at the end
    python examples/python_api.py work/      # keeps data/ and models/ in work/ for the CLI to use afterwards

Steps: generate and prepare synthetic ratings, train a model for three epochs, evaluate it beside the baselines,
load it as a :class:`~embedrec.recommender.Recommender`, recommend for a known user, list similar movies, and
recommend for a new user from a handful of their own ratings (fold-in). Each step is what a CLI command does:
``embedrec prepare --synthetic``, ``train``, ``evaluate``, ``recommend``, ``similar`` and ``recommend --ratings``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from embedrec.data import PrepareConfig, load_prepared, prepare_synthetic
from embedrec.evaluation import evaluate_model
from embedrec.recommender import Recommender
from embedrec.runs import train_run


def main(workdir: Path) -> None:
    data_dir = workdir / "data"

    # 1. Data. prepare_synthetic draws MovieLens-like ratings with planted genre tastes, validates and encodes them,
    #    splits them (random 70/10/20 train/val/test by default) and writes the prepared folder (Parquet + JSON).
    #    With real data, embedrec.data.prepare("ml-latest-small", ...) does the same from a MovieLens release.
    t0 = time.perf_counter()
    summary = prepare_synthetic(
        out=data_dir, n_users=300, n_movies=400, n_ratings=20_000, seed=0, config=PrepareConfig(seed=42)
    )
    prepared = load_prepared(data_dir)
    print(
        f"prepared {summary['n_ratings']:,} ratings of {prepared.n_users} users and {prepared.n_movies} movies "
        f"in {data_dir} ({time.perf_counter() - t0:.1f}s)"
    )

    # 2. Training. train_run resolves the preset ("default": the measured best settings, with the watch output used
    #    for ranking), applies overrides (the CLI's flag names, with underscores) and writes a run folder under
    #    <workdir>/models (here: models/example) that becomes the work folder's latest run. Three epochs keep the
    #    example quick; the preset trains for many more, stopping early once the validation RMSE stops improving.
    t0 = time.perf_counter()
    run = train_run(
        data_dir, workdir=workdir, out=workdir / "models" / "example", preset="default", overrides={"epochs": 3}
    )
    last = run.history[-1]
    print(
        f"\ntrained {run.n_params:,} parameters for {len(run.history)} epochs into {run.run_dir} "
        f"({time.perf_counter() - t0:.1f}s); val RMSE {last['val_rmse']:.3f}"
    )

    # 3. Loading. A Recommender is the trained model in numpy (no JAX needed) plus the prepared data, which supplies
    #    each user's already-rated movies (filtered out of recommendations) and the rating counts per movie.
    rec = Recommender.load(run.run_dir, data_dir)

    # 4. Evaluation on the held-out test split: rating error (RMSE) and full-ranking top-K metrics (every movie the
    #    user did not rate in train is a candidate), with the baselines fitted and scored on the same split. Rating
    #    baselines (global_mean, bias) have no ranking metrics; ranking baselines (popular, top_rated, ease) have no
    #    RMSE. A three-epoch model on 20,000 synthetic ratings need not beat them; that takes real data and the
    #    full preset.
    result = evaluate_model(rec.scorer, prepared, split="test", ks=(10,))
    print(f"\ntest split, {result['n_users']} users ranked:")
    print(f"  {'model':<12} RMSE {result['rmse']:.3f}  NDCG@10 {result['ndcg@10']:.3f}")
    for name, row in result["baselines"].items():
        rmse = f"{row['rmse']:.3f}" if "rmse" in row else "  -  "
        ndcg = f"{row['ndcg@10']:.3f}" if "ndcg@10" in row else "  -"
        print(f"  {name:<12} RMSE {rmse}  NDCG@10 {ndcg}")

    # 5. Recommendations for a known user, in raw MovieLens ids: a pandas DataFrame of movie_id, title, year, genres,
    #    score (what the ranking sorts by) and rating (the predicted rating). Movies the user rated are excluded.
    user_id = int(rec.user_ids[0])
    print(f"\ntop 10 for user {user_id}:")
    print(rec.recommend(user_id, k=10).to_string(index=False, float_format="{:.2f}".format))

    # 6. Similar movies: the nearest neighbours of a movie's learned embedding by cosine similarity. find_movies
    #    looks movies up by words of their title, as `embedrec similar --movie "toy story"` does; here the query is
    #    the most rated movie's title.
    counts = rec.rating_counts()
    query = str(rec.movies["title"].iloc[int(counts.argmax())])
    found = rec.find_movies(query)
    print(f"\nmovies similar to {found['title'].iloc[0]} ({found['genres'].iloc[0]}):")
    print(rec.similar(int(found["movie_id"].iloc[0]), k=5).to_string(index=False, float_format="{:.3f}".format))

    # 7. A new user the model never saw: fold_in fits an embedding and a bias from their (movie_id, rating) pairs,
    #    with the trained network held fixed; recommend_for then ranks movies for them (their rated movies
    #    excluded). This user loves the five most rated comedies and dislikes the three most rated horror movies.
    def most_rated(genre: str, n: int) -> list[int]:
        has_genre = rec.genre_mask(genre)
        ids = rec.movie_ids[has_genre][(-counts[has_genre]).argsort()[:n]]
        return [int(m) for m in ids]

    mine = [(m, 5.0) for m in most_rated("Comedy", 5)] + [(m, 1.0) for m in most_rated("Horror", 3)]
    new_user = rec.fold_in(mine)
    print(f"\ntop 10 for a new user who rated {mine}:")
    print(rec.recommend_for(new_user, k=10).to_string(index=False, float_format="{:.2f}".format))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="embedrec-example-") as tmp:
            main(Path(tmp))
