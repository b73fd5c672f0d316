"""The JSON shapes of ``embedrec serve``: one pydantic model per request and response.

Field names follow ``embedrec recommend --format json`` and ``embedrec similar --json`` (``movieId``, ``title``,
``year``, ``genres``, ``score``, ``rating``, ``similarity``), so a script that parses the CLI's output parses the
server's too. Request limits live here, beside the fields they bound, so the OpenAPI page at ``/docs`` shows them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from embedrec.data.encode import parse_id

MAX_K = 100
"""Largest ``k`` any endpoint accepts: a page of results, not a catalogue dump (use ``recommend --all-users``)."""
MAX_FOLD_IN_RATINGS = 1_000
"""Most ratings one fold-in request may carry; fold-in cost grows with them and 1,000 is far past a sign-up form."""
MAX_PREDICT_PAIRS = 10_000
"""Most (user, movie) pairs one ``POST /predict`` may score (about 0.5 MB of JSON); batch jobs send several."""
MAX_SEARCH_RESULTS = 100
MAX_BODY_BYTES = 1_048_576
"""Request bodies above this are refused with 413 before they are read: ample for 10,000 pairs."""


def _plain_int(value: Any) -> Any:
    """A query or path parameter's text read by :func:`~embedrec.data.encode.parse_id`: pydantic's own int parsing
    would take "1_000" for 1000 and "+5", " 7" or "5.0" for 5."""
    if not isinstance(value, str):
        return value
    number = parse_id(value)
    if number is None:
        raise PydanticCustomError(
            "int_parsing", "expected a whole number in plain digits, like 42 or -7, got {given}", {"given": repr(value)}
        )
    return number


PLAIN_DIGITS = BeforeValidator(_plain_int)
"""The reader of an integer query or path parameter (an id, ``k``, a limit): plain decimal digits only, else 422
naming it. It goes after ``Query(...)`` in the ``Annotated``, so that the OpenAPI schema keeps the bounds."""

K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many movies to return (1..{MAX_K}).")]


class _Strict(BaseModel):
    """Request bodies reject unknown fields (a misspelt option must not be silently ignored) and values of another
    JSON type: `true` is not the rating 1, nor `"yes"` a yes (strict mode; an integer still serves as a float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Movie(BaseModel):
    movieId: int
    title: str | None = None
    year: int | None = None
    genres: str | None = None


class RecommendedMovie(Movie):
    score: float | None = Field(
        description="The ranking score (the model's own, or the Bayesian average when cold-start)."
    )
    rating: float | None = Field(description="The predicted rating; null in the cold-start list.")


class Recommendations(BaseModel):
    userId: int | None = Field(description="The requested user; null for a folded-in new user.")
    coldStart: bool = Field(description="True when the user is unknown and the list is the popular fallback.")
    ranking: str = Field(description="What the score means.")
    recommendations: list[RecommendedMovie]


class RatedMovie(_Strict):
    movieId: int
    rating: float


class FoldInRequest(_Strict):
    """A new user's own ratings; the model fits them an embedding (fold-in) and recommends from it."""

    ratings: list[RatedMovie] = Field(min_length=1, max_length=MAX_FOLD_IN_RATINGS)
    k: K = 10
    genre: str | None = None
    min_ratings: int = Field(default=5, ge=0)
    include_seen: bool = False

    @field_validator("ratings")
    @classmethod
    def _each_movie_once(cls, ratings: list[RatedMovie]) -> list[RatedMovie]:
        """Two ratings of one movie: which one the user meant is not the server's to guess."""
        first: dict[int, int] = {}
        for i, rated in enumerate(ratings):
            if rated.movieId in first:
                raise ValueError(
                    f"movie {rated.movieId} is rated twice (ratings[{first[rated.movieId]}] and ratings[{i}]): "
                    "send it once"
                )
            first[rated.movieId] = i
        return ratings


class SimilarMovie(Movie):
    similarity: float


class SimilarMovies(BaseModel):
    movieId: int
    title: str | None
    similar: list[SimilarMovie]


class Prediction(BaseModel):
    userId: int
    movieId: int
    rating: float | None = Field(description="Predicted rating; null when the user or movie is unknown.")
    reason: str = Field(default="", description='"" or "unknown user" / "unknown movie" / "unknown user and movie".')


class Pair(_Strict):
    userId: int
    movieId: int


class PredictRequest(_Strict):
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_PREDICT_PAIRS)


class Predictions(BaseModel):
    predictions: list[Prediction]
    n_unknown: int


class MovieSearch(BaseModel):
    query: str
    total: int = Field(description="How many titles match; at most `limit` are listed.")
    movies: list[Movie]


class ModelInfo(BaseModel):
    """What the server is answering with. No file paths: the run is named by its folder name only."""

    run: str
    preset: str | None
    created: str | None
    fingerprint: str = Field(description="Fingerprint of the prepared data the model was trained on.")
    data_loaded: bool = Field(description="Whether the prepared data is loaded (seen filter, cold start, page).")
    n_users: int
    n_movies: int
    n_params: int | None
    ranking: str
    best_epoch: int | None
    metrics: dict[str, float | None]
    loaded_at: str
    generation: int = Field(description="1 for the model loaded at start, +1 per successful reload.")


class Health(BaseModel):
    status: str
    run: str
    generation: int


class ReloadResult(BaseModel):
    reloaded: bool
    run: str
    generation: int
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one sentence saying what was wrong and, where it helps, what to do."""

    detail: str
