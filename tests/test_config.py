"""Settings: presets, overrides split between model and training, config files, and the JSON round trip."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from embedrec.config import (
    ModelConfig,
    TrainConfig,
    adapt_to_data,
    check_settings,
    load_config_file,
    model_config_from_dict,
    preset,
    split_overrides,
    to_dict,
    train_config_from_dict,
)
from embedrec.errors import ConfigError, SettingError


def test_presets_round_trip_through_their_dicts() -> None:
    for name in ("seed", "default"):
        model_cfg, train_cfg = preset(name)
        assert model_config_from_dict(to_dict(model_cfg)) == model_cfg
        assert train_config_from_dict(to_dict(train_cfg)) == train_cfg
    assert to_dict(preset("seed")[0])["hidden"] == [64, 10]
    with pytest.raises(ConfigError, match="--preset: unknown preset 'big'"):
        preset("big")


def test_overrides_go_to_the_config_they_belong_to() -> None:
    model_changes, train_changes = split_overrides({"hidden": [32, 8], "lr": 0.1, "preset": "seed"})
    assert model_changes == {"hidden": (32, 8)} and train_changes == {"lr": 0.1}
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        split_overrides({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"lr_decay": 1.5}, "lr_decay"),
        ({"sampling": "zipf"}, "sampling"),
        ({"watch_loss": "hinge"}, "watch_loss"),
        ({"lr": "0.1"}, "lr"),
        ({"epochs": 2.5}, "epochs"),
    ],
)
def test_bad_train_settings_name_the_setting(changes: dict, option: str) -> None:
    with pytest.raises(SettingError, match=f"^{option}: ") as caught:
        TrainConfig(**changes)
    assert caught.value.setting == option


def test_negatives_need_the_watch_output() -> None:
    with pytest.raises(ConfigError, match="^negatives: "):
        check_settings(ModelConfig(watch_head=False), TrainConfig(negatives=8))
    check_settings(ModelConfig(watch_head=True), TrainConfig(negatives=8))


def test_a_whole_number_setting_takes_a_whole_float_and_refuses_any_other() -> None:
    """One rule for counts and sizes (config.whole_number), as the Python API's -k and fold-in take them: a JSON
    or TOML file may spell 10 as 10.0; 10.5, true and "10" are refused naming the setting."""
    cfg = TrainConfig(epochs=10.0, batch_size=np.int64(128))  # type: ignore[arg-type]
    assert (cfg.epochs, cfg.batch_size) == (10, 128) and type(cfg.epochs) is int and type(cfg.batch_size) is int
    assert ModelConfig(hidden=(32.0, 8)).hidden == (32, 8)  # type: ignore[arg-type]
    for bad in (10.5, True, "10", float("nan")):
        with pytest.raises(ConfigError, match=r"epochs: expected a whole number"):
            TrainConfig(epochs=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hidden: expected a list of whole numbers"):
        ModelConfig(hidden=(32.5, 8))  # type: ignore[arg-type]


def test_a_config_file_reads_each_setting_as_its_type(tmp_path: Path) -> None:
    """What the file spells as another number type is read as the setting's type, so that the same file given
    again (train --resume --config) matches the run.json the first run wrote."""
    path = tmp_path / "c.json"
    path.write_text('{"epochs": 10.0, "lr": 1, "hidden": [32.0, 8]}')
    got = load_config_file(path)
    assert got == {"epochs": 10, "lr": 1.0, "hidden": [32, 8]}
    assert type(got["epochs"]) is int and type(got["lr"]) is float and all(type(v) is int for v in got["hidden"])


def test_config_files_accept_dashes_sections_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "hp.toml"
    toml.write_text('preset = "seed"\nbatch-size = 256\n[model]\nhidden = [32, 8]\n')
    assert load_config_file(toml) == {"preset": "seed", "batch_size": 256, "hidden": [32, 8]}
    bad = tmp_path / "hp.json"
    bad.write_text('{"hidden": "64"}')
    with pytest.raises(ConfigError, match="hidden must be a list of whole numbers"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "none.json")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "dash.toml",
            "movie_clusters = 4\nmovie-clusters = 8\n",
            "'movie_clusters' twice (movie_clusters and movie-clusters)",
        ),
        ("table.toml", "lr = 0.1\n[train]\nlr = 0.2\n", "'lr' twice (lr and train.lr)"),
        (
            "section.json",
            '{"movie_clusters": 4, "model": {"movie_clusters": 8}}',
            "(movie_clusters and model.movie_clusters)",
        ),
        ("same.json", '{"lr": 0.1, "lr": 0.2}', "'lr' twice: keep one"),
    ],
)
def test_a_setting_written_twice_in_a_config_file_is_refused(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    """Which of the two would win is not for embedrec to guess: the file and the two spellings are named."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"--config: {path} sets ") + ".*" + re.escape(message)):
        load_config_file(path)


def test_a_config_files_value_out_of_its_domain_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "hp.toml"
    path.write_text("[train]\nrow_decay = -1\n")
    with pytest.raises(ConfigError, match=re.escape(f"--config: {path}: row_decay: must be >= 0, got -1")):
        load_config_file(path)


def test_the_default_preset_adapts_to_a_sparse_catalogue_but_never_overrides_the_user() -> None:
    model_cfg, train_cfg = preset("default")
    dense_model, dense, why = adapt_to_data("default", model_cfg, train_cfg, n_train=70_000, n_movies_rated=1_650)
    assert dense == train_cfg and dense_model == model_cfg and why == {}
    sparse_model, sparse, why = adapt_to_data("default", model_cfg, train_cfg, n_train=23_000, n_movies_rated=1_480)
    assert (sparse.rating_embedding_grad, sparse.rmse_slack, sparse.baseline_blend) == (0.1, 0.01, True)
    no_biases = model_cfg.replace(biases=False)
    no_blend = adapt_to_data("default", no_biases, train_cfg, n_train=23_000, n_movies_rated=1_480)[2]
    assert "baseline_blend" not in no_blend
    no_val = adapt_to_data("default", model_cfg, train_cfg, n_train=23_000, n_movies_rated=1_480, n_val=0)
    assert not no_val[1].baseline_blend and "baseline_blend" not in no_val[2]  # nothing to choose the share on
    assert sparse_model == model_cfg.replace(user_history=True) and why["user_history"] is True
    assert "15.5 training ratings per movie" in why["because"]
    assert sparse.negatives == train_cfg.negatives and "negatives" not in why  # no user count: histories unknown
    _, long_users, why = adapt_to_data(
        "default", model_cfg, train_cfg, n_train=23_000, n_movies_rated=1_480, n_users=314
    )
    assert long_users.negatives == train_cfg.negatives  # 73 ratings a user: long histories keep 64
    assert long_users.weight_decay == 0.05 and why["weight_decay"] == 0.05 > train_cfg.weight_decay
    assert why["because"].endswith("; 73.2 per user (>= 40: long histories)")
    mine_decay = adapt_to_data(
        "default", model_cfg, train_cfg, n_train=23_000, n_movies_rated=1_480, n_users=314, explicit={"weight_decay"}
    )[2]
    assert "weight_decay" not in mine_decay  # the user's own weight decay stays
    dense_long = adapt_to_data("default", model_cfg, train_cfg, n_train=70_000, n_movies_rated=1_650, n_users=943)
    assert dense_long[1] == train_cfg and dense_long[2] == {}  # long histories on a dense catalogue: not adapted
    _, short, why = adapt_to_data("default", model_cfg, train_cfg, n_train=11_000, n_movies_rated=1_280, n_users=943)
    assert short.negatives == 128 and why["negatives"] == 128 and short.weight_decay == train_cfg.weight_decay
    assert why["because"].endswith("; 11.7 per user (< 40: short histories)")
    mine_negatives = adapt_to_data(
        "default", model_cfg, train_cfg, n_train=11_000, n_movies_rated=1_280, n_users=943, explicit={"negatives"}
    )[1]
    assert mine_negatives.negatives == train_cfg.negatives
    dense_short = adapt_to_data("default", model_cfg, train_cfg, n_train=9_000, n_movies_rated=200, n_users=943)[1]
    assert dense_short.negatives == train_cfg.negatives  # short histories alone, on a dense catalogue: not adapted
    mine_model, mine, why = adapt_to_data(
        "default",
        model_cfg,
        train_cfg,
        n_train=23_000,
        n_movies_rated=1_480,
        explicit={"rating_embedding_grad", "user_history", "baseline_blend"},
    )
    assert mine.rating_embedding_grad == 1.0 and why["rmse_slack"] == 0.01
    assert not mine.baseline_blend and "baseline_blend" not in why
    assert not mine_model.user_history and "user_history" not in why
    seed_model, seed_train = preset("seed")
    assert adapt_to_data("seed", seed_model, seed_train, n_train=100, n_movies_rated=50)[2] == {}
    for split in ("temporal", "leave-last-out"):
        by_time_model, by_time, why = adapt_to_data(
            "default", model_cfg, train_cfg, n_train=70_000, n_movies_rated=1_600, split_method=split
        )
        assert by_time.rating_embedding_grad == 0.1 and by_time.baseline_blend and not by_time_model.user_history
        assert why["because"] == f"a {split} split (the model is judged on later ratings)"


def test_a_sparse_catalogue_without_genres_learns_movie_clusters_in_their_place() -> None:
    model_cfg, train_cfg = preset("default")
    bare_model, _, why = adapt_to_data(
        "default", model_cfg, train_cfg, n_train=11_000, n_movies_rated=1_280, n_users=943, bare=True
    )
    assert bare_model.movie_clusters == 16 and why["movie_clusters"] == 16
    assert why["because"].endswith(
        "; no genres, and 92 co-ratings per movie (>= 50: movie clusters learned from the ratings stand in for the"
        " genres)"
    )
    thin = adapt_to_data("default", model_cfg, train_cfg, n_train=6_000, n_movies_rated=1_100, n_users=943, bare=True)
    assert thin[0].movie_clusters == 0  # 5.5 a movie x 5.4 other ratings of its users: too few to cluster
    with_genres = adapt_to_data("default", model_cfg, train_cfg, n_train=11_000, n_movies_rated=1_280, n_users=943)
    assert with_genres[0].movie_clusters == 0 and "movie_clusters" not in with_genres[2]
    dense_bare = adapt_to_data(
        "default", model_cfg, train_cfg, n_train=70_000, n_movies_rated=1_650, n_users=943, bare=True
    )
    assert dense_bare[0].movie_clusters == 0  # measured on sparse catalogues only
    for explicit, mine in (({"movie_clusters"}, model_cfg), (set(), model_cfg.replace(movie_clusters=40))):
        kept = adapt_to_data(
            "default", mine, train_cfg, n_train=11_000, n_movies_rated=1_280, n_users=943, bare=True, explicit=explicit
        )
        assert kept[0].movie_clusters == mine.movie_clusters and "movie_clusters" not in kept[2]
    no_watch = adapt_to_data(
        "default", model_cfg.replace(watch_head=False), train_cfg, n_train=11_000, n_movies_rated=1_280, bare=True
    )
    assert no_watch[0].movie_clusters == 0
    with pytest.raises(ConfigError, match="movie_clusters"):
        ModelConfig(movie_clusters=-1)
