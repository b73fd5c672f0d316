"""The FastAPI application of ``embedrec serve``: JSON endpoints over one :class:`~embedrec.serve.state.ModelHolder`.

Synopsis::

    from embedrec.serve import ModelHolder, ModelSource, ServeSettings, create_app
    app = create_app(ModelHolder(ModelSource(workdir=Path(".embedrec"))), ServeSettings(api_key=None))
    # uvicorn.run(app, host="127.0.0.1", port=8000)  -- what `embedrec serve` does

The cheap endpoints (``GET /recommend``, ``/similar``, ``GET /predict``, ``/model``, ``/healthz``) and the
dependencies are ``async def``: they answer in a few milliseconds of numpy on the event loop, and a plain ``def``
would cost each request hops through the thread pool (dependencies, endpoint, response validation) that took longer
than the ranking itself. The slow ones (fold-in, batch predict, title search, reload) stay plain ``def`` and run in
FastAPI's thread pool, so they never stall the loop; numpy releases the GIL inside them. Responses are built from the
ranking's arrays and movie fields converted once at load (:meth:`LoadedModel.movie_records`), never from pandas.
Each request reads the served model once (``holder.current``) and keeps it to the end, so a reload never changes a
model under a running request. Errors become one JSON line, ``{"detail": "..."}``: unknown ids 404,
bad parameters 422, oversized bodies 413, a missing or wrong key 401; an unexpected failure is logged with its
traceback and answered with a plain 500. Absolute paths are cut from every message a client sees.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedrec import __version__
from embedrec.errors import ConfigError, DataError, EmbedrecError, UnknownIdError
from embedrec.serve import schemas
from embedrec.serve.state import LoadedModel, ModelHolder, ModelSource, redact_paths

log = logging.getLogger("embedrec.serve")

API_KEY_ENV = "EMBEDREC_API_KEY"
SETTINGS_ENV = "EMBEDREC_SERVE_SETTINGS"
KEY_COOKIE = "embedrec_key"


@dataclass(frozen=True)
class ServeSettings:
    """How the app guards itself. ``api_key`` None: open (the default bind is loopback only)."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    workers: int = 1
    max_body_bytes: int = schemas.MAX_BODY_BYTES
    source: ModelSource = field(default_factory=ModelSource)


# ---------------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------------
def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guessed key was right."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _require_key(request: Request) -> None:
    settings: ServeSettings = request.app.state.settings
    if settings.api_key is None:
        return
    if not key_matches(bearer_token(request), settings.api_key):
        raise HTTPException(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _served(request: Request) -> LoadedModel:
    """The model for this whole request (a reload swaps the holder's reference, never this object)."""
    return request.app.state.holder.current


Served = Annotated[LoadedModel, Depends(_served)]


# ---------------------------------------------------------------------------------------------------------------
# Body size
# ---------------------------------------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length up front or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, "the Content-Length header is not a number")
                return
            if too_large:
                await _send_json(send, 413, self._message())
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())  # FastAPI lets HTTPException through body parsing
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes:,} bytes: split it into smaller requests"


class HeadAsGet:
    """Answer HEAD as GET without the body (RFC 9110: a GET resource supports HEAD), so health checkers that send
    HEAD /healthz get 200 and the headers, not 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": redact_paths(detail)}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """The first problem as one line: where (query k, body ratings[0].rating) and what pydantic says."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    where = loc[0] if loc else "request"
    name = ""
    for part in loc[1:]:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    msg = str(first.get("msg", "invalid"))
    if first.get("type") == "json_invalid":
        at = loc[1] if len(loc) > 1 else "?"
        return f"the request body is not valid JSON (error at character {at}): send a JSON object"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where} {name}: {msg}{more}" if name else f"{where}: {msg}{more}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body_itself = any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors())
        if body_itself and request.method == "POST" and kind != "application/json":  # curl -d sends a form
            return _error(
                422, f"send the body as JSON with the header Content-Type: application/json (got {kind or 'none'})"
            )
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a body its JSON reader gave up on (invalid UTF-8, nesting or a number too deep or
            # long, a compressed body) before validation: the same 422 and advice as any other body that is not JSON
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                return _error(415, f"Content-Encoding {encoding} is not accepted: send the JSON uncompressed")
            return _error(422, "the request body is not valid JSON (UTF-8 text, plainly nested): send a JSON object")
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownIdError)
    async def _unknown(_: Request, exc: UnknownIdError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(ConfigError)
    async def _config(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(EmbedrecError)
    async def _other(_: Request, exc: EmbedrecError) -> JSONResponse:
        log.error("request failed: %s", exc)
        return _error(500, str(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error (the server log has the details)")


# ---------------------------------------------------------------------------------------------------------------
# Tables -> JSON records (the names of `recommend --format json`)
# ---------------------------------------------------------------------------------------------------------------
def _column(table: pd.DataFrame, name: str, kind: type) -> list[Any]:
    """A column as plain Python values, None for missing ones (pandas NA, NaN)."""
    if name not in table:
        return [None] * len(table)
    values = table[name].to_numpy(dtype=object, na_value=None).tolist()  # 5x faster than astype + isna
    return [None if value is None else kind(value) for value in values]


def movie_records(table: pd.DataFrame, *extra: str) -> list[dict[str, Any]]:
    """Rows of a recommender table as ``{"movieId", "title", "year", "genres", *extra}`` dicts."""
    columns = {
        "movieId": _column(table, "movie_id", int),
        "title": _column(table, "title", str),
        "year": _column(table, "year", int),
        "genres": _column(table, "genres", str),
    }
    for name in extra:
        columns[name] = _column(table, name, float)
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*columns.values())]


# ---------------------------------------------------------------------------------------------------------------
# JSON API
# ---------------------------------------------------------------------------------------------------------------
api = APIRouter(dependencies=[Depends(_require_key)])
K = Annotated[
    int, Query(ge=1, le=schemas.MAX_K, description=f"How many movies (1..{schemas.MAX_K})."), schemas.PLAIN_DIGITS
]
MinRatings = Annotated[
    int, Query(ge=0, description="Skip movies with fewer ratings than this in the data."), schemas.PLAIN_DIGITS
]


@api.get("/recommend", response_model=schemas.Recommendations, summary="Top-k movies for a user")
async def recommend(
    served: Served,
    user: Annotated[int, Query(description="Raw user id."), schemas.PLAIN_DIGITS],
    k: K = 10,
    genre: Annotated[str | None, Query(max_length=100)] = None,
    min_ratings: MinRatings = 5,
    include_seen: bool = False,
) -> dict[str, Any]:
    """Movies the user has not rated, best first. An unknown user gets the cold-start list (``coldStart: true``)."""
    rec = served.rec
    genre = served.canonical_genre(genre)
    if user in rec.user_vocab:
        ranked = rec.rank_user(user, k=k, filter_seen=not include_seen, genre=genre, min_ratings=min_ratings)
        return {
            "userId": user,
            "coldStart": False,
            "ranking": rec.ranking.describe(),
            "recommendations": served.movie_records(
                ranked.movie_idx[0], score=ranked.score[0], rating=ranked.rating[0]
            ),
        }
    if served.prepared is None:
        raise UnknownIdError(
            f"user {user} is not known to the model, and without prepared data there is no "
            "cold-start list: start the server with --data DIR"
        )
    top, score = rec.rank_popular(k=k, genre=genre, min_ratings=min_ratings)
    return {
        "userId": user,
        "coldStart": True,
        "ranking": "Bayesian average rating (cold start)",
        "recommendations": served.movie_records(top, score=score, rating=np.full(len(top), np.nan)),
    }


@api.post("/recommend", response_model=schemas.Recommendations, summary="Top-k for a new user's own ratings")
def recommend_new_user(served: Served, body: schemas.FoldInRequest) -> dict[str, Any]:
    """Fits the new user an embedding from their ratings (fold-in, the model frozen) and recommends from it."""
    rec = served.rec
    genre = served.canonical_genre(body.genre)
    user = rec.fold_in([(r.movieId, r.rating) for r in body.ratings])
    ranked = rec.rank_folded(
        user, k=body.k, filter_seen=not body.include_seen, genre=genre, min_ratings=body.min_ratings
    )
    return {
        "userId": None,
        "coldStart": False,
        "ranking": rec.ranking.describe(),
        "recommendations": served.movie_records(ranked.movie_idx[0], score=ranked.score[0], rating=ranked.rating[0]),
    }


@api.get("/similar", response_model=schemas.SimilarMovies, summary="Movies nearest to one movie")
async def similar(
    served: Served, movie: Annotated[int, Query(description="Raw movie id."), schemas.PLAIN_DIGITS], k: K = 10
) -> dict[str, Any]:
    """Nearest movies by cosine similarity of the learned movie embeddings (the movie itself excluded)."""
    top, sims = served.rec.rank_similar(movie, k=k)
    return {
        "movieId": movie,
        "title": served.movie_fields[1][served.rec.movie_vocab.index(movie)],
        "similar": served.movie_records(top, similarity=sims),
    }


@api.get("/predict", response_model=schemas.Prediction, summary="Predicted rating of one (user, movie) pair")
async def predict(
    served: Served,
    user: Annotated[int, Query(description="Raw user id."), schemas.PLAIN_DIGITS],
    movie: Annotated[int, Query(description="Raw movie id."), schemas.PLAIN_DIGITS],
) -> dict[str, Any]:
    rating = float(served.rec.predict([user], [movie])[0])
    return {"userId": user, "movieId": movie, "rating": rating, "reason": ""}


@api.post("/predict", response_model=schemas.Predictions, summary="Predicted ratings of many pairs")
def predict_many(served: Served, body: schemas.PredictRequest) -> dict[str, Any]:
    """Unknown users or movies do not fail the batch: their ``rating`` is null and ``reason`` says why."""
    users = [p.userId for p in body.pairs]
    movies = [p.movieId for p in body.pairs]
    ratings, reasons = served.rec.predict_known(users, movies)
    rows = [
        {"userId": u, "movieId": m, "rating": None if r != r else float(r), "reason": str(why)}
        for u, m, r, why in zip(users, movies, ratings.tolist(), reasons.tolist())
    ]
    return {"predictions": rows, "n_unknown": sum(1 for row in rows if row["reason"])}


@api.get("/movies", response_model=schemas.MovieSearch, summary="Find movies by title words")
def movies(
    served: Served,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Title words.")],
    limit: Annotated[int, Query(ge=1, le=schemas.MAX_SEARCH_RESULTS), schemas.PLAIN_DIGITS] = 20,
) -> dict[str, Any]:
    """Movies whose title holds every word of ``q`` (case-insensitive); an exact title match wins."""
    if not q.strip():
        raise ConfigError("query q: give at least one title word")
    found = served.rec.find_movies(q)
    return {"query": q, "total": len(found), "movies": movie_records(found.head(limit))}


@api.get("/model", response_model=schemas.ModelInfo, summary="What is loaded")
async def model_info(served: Served) -> dict[str, Any]:
    return served.info()


@api.post(
    "/admin/reload",
    response_model=schemas.ReloadResult,
    summary="Load the newest model and swap",
    responses={
        202: {"model": schemas.ReloadResult},
        403: {"model": schemas.ErrorBody},
        409: {"model": schemas.ErrorBody},
    },
)
def reload_model(request: Request) -> Any:
    """Load the latest run beside the served one, validate it, then swap; a refused model leaves the old serving.

    Needs the API key. With ``--workers N > 1`` each worker is its own process: the request asks uvicorn's
    supervisor (SIGHUP) to replace the workers one at a time, each loading and validating the latest model at
    start, and answers 202 before that finishes.
    """
    settings: ServeSettings = request.app.state.settings
    holder: ModelHolder = request.app.state.holder
    if settings.api_key is None:
        raise HTTPException(
            403,
            "reloading over HTTP needs the server started with --api-key (or "
            f"{API_KEY_ENV}); without one, send SIGHUP to the server process",
        )
    if settings.workers > 1:
        os.kill(os.getppid(), signal.SIGHUP)
        current = holder.current
        return JSONResponse(
            status_code=202,
            content={
                "reloaded": False,
                "run": current.run,
                "generation": current.generation,
                "message": f"asked the supervisor to replace the {settings.workers} workers one at a time; each loads "
                "and validates the latest model, and a worker whose model is refused is not started",
            },
        )
    outcome = holder.reload()
    result = {
        "reloaded": outcome.reloaded,
        "run": outcome.served.run,
        "generation": outcome.served.generation,
        "message": outcome.message,
    }
    return result if outcome.reloaded else JSONResponse(status_code=409, content=result)


open_routes = APIRouter()


@open_routes.get("/healthz", response_model=schemas.Health, summary="Liveness (no key needed)")
async def healthz(served: Served) -> dict[str, Any]:
    return {"status": "ok", "run": served.run, "generation": served.generation}


# ---------------------------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------------------------
def create_app(holder: ModelHolder, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app over an already loaded ``holder``; SIGHUP reloads it while the app runs in the main thread."""
    from embedrec.serve.page import page

    settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from embedrec.blas import set_blas_threads

        set_blas_threads(1)  # requests run in parallel; each one's matrix products are small
        loop = asyncio.get_running_loop()
        hup = getattr(signal, "SIGHUP", None)
        installed = False
        if hup is not None and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(hup, lambda: loop.run_in_executor(None, holder.reload))
                installed = True
            except (NotImplementedError, RuntimeError):  # a loop without signal support
                pass
        log.info(
            "serving model %s (pid %d)%s", holder.current.run, os.getpid(), "; SIGHUP reloads" if installed else ""
        )
        yield
        if installed and hup is not None:
            loop.remove_signal_handler(hup)

    from fastapi_offline import FastAPIOffline

    # /docs and /redoc with Swagger UI's and ReDoc's files served from the installed fastapi-offline package: no CDN,
    # so the docs work on a server without internet access; the validator badge (an external call) is off
    app = FastAPIOffline(
        swagger_ui_parameters={"validatorUrl": None},
        title="embedrec",
        version=__version__,
        lifespan=lifespan,
        description="Movie recommendations from a trained embedrec model: top-k for known and new users, "
        "similar movies, predicted ratings. Field names follow `embedrec recommend --format "
        "json`.",
        responses={
            401: {"model": schemas.ErrorBody},
            404: {"model": schemas.ErrorBody},
            413: {"model": schemas.ErrorBody},
            422: {"model": schemas.ErrorBody},
        },
    )
    app.state.holder = holder
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(open_routes)
    app.include_router(api)
    app.include_router(page)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    return app


def settings_to_env(settings: ServeSettings) -> dict[str, str]:
    """What a worker process needs to rebuild the settings (the key travels in its own variable, not in JSON)."""
    src = settings.source
    payload = {
        "workdir": _path_str(src.workdir),
        "model": _path_str(src.model),
        "data": _path_str(src.data),
        "ann": src.ann,
        "cors_origins": list(settings.cors_origins),
        "workers": settings.workers,
        "max_body_bytes": settings.max_body_bytes,
    }
    env = {SETTINGS_ENV: json.dumps(payload)}
    if settings.api_key is not None:
        env[API_KEY_ENV] = settings.api_key
    return env


def _path_str(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


def app_from_env() -> FastAPI:
    """The factory each uvicorn worker process calls (``--workers N > 1``): settings from the environment."""
    raw = json.loads(os.environ[SETTINGS_ENV])
    paths = {k: None if raw[k] is None else Path(raw[k]) for k in ("workdir", "model", "data")}
    source = ModelSource(**paths, ann=bool(raw.get("ann", False)))
    settings = ServeSettings(
        api_key=os.environ.get(API_KEY_ENV) or None,
        cors_origins=tuple(raw["cors_origins"]),
        workers=int(raw["workers"]),
        max_body_bytes=int(raw["max_body_bytes"]),
        source=source,
    )
    try:
        holder = ModelHolder(source)
    except EmbedrecError as exc:  # one line in the log; the supervisor keeps the old worker
        log.error("worker %d not started: %s", os.getpid(), exc)
        raise SystemExit(3) from None
    return create_app(holder, settings)
