"""The small HTML page of ``embedrec serve``: server-rendered Jinja2 templates, plain forms, no JavaScript.

- ``GET /``: pick a user; what they rated highly beside what the model recommends (genres, years).
- ``GET /rate``: rate a handful of movies (popular ones, or found by title) and see the fold-in recommendations.
- ``GET /movie/{movie_id}``: a movie and its nearest movies; every title on the page links here.

It calls the same :class:`~embedrec.recommender.Recommender` methods as the JSON API. With an API key the page asks
for the key once (``POST /login``) and keeps it in an HttpOnly, SameSite=Strict cookie.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from embedrec.data.encode import parse_id
from embedrec.errors import EmbedrecError, UnknownIdError
from embedrec.serve.app import KEY_COOKIE, ServeSettings, bearer_token, key_matches, movie_records
from embedrec.serve.schemas import PLAIN_DIGITS
from embedrec.serve.state import LoadedModel, redact_paths

PAGE_K = 10
RATE_CANDIDATES = 20
EXAMPLE_USERS = 8

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
page = APIRouter(include_in_schema=False)


def _authorized(request: Request) -> bool:
    settings: ServeSettings = request.app.state.settings
    if settings.api_key is None:
        return True
    given = bearer_token(request) or request.cookies.get(KEY_COOKIE)
    return key_matches(given, settings.api_key)


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    if not _authorized(request):
        return templates.TemplateResponse(
            request, "login.html", {"error": None, "next": request.url.path}, status_code=401
        )
    served: LoadedModel = request.app.state.holder.current
    return templates.TemplateResponse(request, name, {"model": served.info(), **context}, status_code=status)


def _example_users(served: LoadedModel) -> list[int]:
    ids = served.rec.user_ids
    picks = np.unique(np.linspace(0, len(ids) - 1, num=min(EXAMPLE_USERS, len(ids))).astype(int))
    return [int(ids[i]) for i in picks]


@page.get("/", response_class=HTMLResponse)
def home(request: Request, user: Annotated[str | None, Query()] = None) -> Response:
    served: LoadedModel = request.app.state.holder.current
    rec = served.rec
    context: dict[str, Any] = {
        "examples": _example_users(served),
        "user": None,
        "rated": [],
        "recs": [],
        "cold_start": False,
        "error": None,
    }
    if user is None or not user.strip():
        return _render(request, "index.html", context)
    user_id = parse_id(user.strip())
    if user_id is None:
        context["error"] = f"{user.strip()!r} is not a user id (a whole number in plain digits, like 42)"
        return _render(request, "index.html", context, status=422)
    context["user"] = user_id
    if user_id in rec.user_vocab:
        movie_idx, ratings = served.user_ratings(user_id)
        top = movie_idx[:PAGE_K]
        rated = rec.movies.iloc[top].reset_index(drop=True)
        rated["rating"] = ratings[:PAGE_K].astype(float)
        context["rated"] = movie_records(rated, "rating")
        context["n_rated"] = len(movie_idx)
        context["recs"] = movie_records(rec.recommend(user_id, k=PAGE_K), "score", "rating")
        context["ranking"] = rec.ranking.describe()
    elif served.prepared is not None:
        context["cold_start"] = True
        context["recs"] = movie_records(rec.popular(k=PAGE_K), "score", "rating")
        context["ranking"] = "Bayesian average rating (cold start)"
    else:
        context["error"] = f"user {user_id} is not known to the model"
    return _render(request, "index.html", context)


@page.get("/movie/{movie_id}", response_class=HTMLResponse)
def movie_page(request: Request, movie_id: Annotated[int, PathParam(), PLAIN_DIGITS]) -> Response:
    served: LoadedModel = request.app.state.holder.current
    rec = served.rec
    try:
        idx = rec.movie_vocab.index(movie_id)
    except UnknownIdError as exc:
        return _render(request, "movie.html", {"movie": None, "similar": [], "error": str(exc)}, status=404)
    movie = movie_records(rec.movies.iloc[[idx]])[0]
    similar = movie_records(rec.similar(movie_id, k=PAGE_K), "similarity")
    return _render(request, "movie.html", {"movie": movie, "similar": similar, "error": None})


@page.get("/rate", response_class=HTMLResponse)
def rate(request: Request, q: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    """The form posts back here by GET: ``r<movieId>=<rating>`` for each rated movie, so a result is a link."""
    served: LoadedModel = request.app.state.holder.current
    rec = served.rec
    given: dict[int, float] = {}
    for name, value in request.query_params.items():
        movie_id = parse_id(name[1:]) if name.startswith("r") else None
        if movie_id is not None and value.strip():
            try:
                given[movie_id] = float(value)
            except ValueError:
                continue
    candidates = (
        movie_records(rec.popular(k=RATE_CANDIDATES))
        if served.prepared is not None
        else movie_records(rec.movies.head(RATE_CANDIDATES))
    )
    if q and q.strip():
        candidates = movie_records(rec.find_movies(q).head(RATE_CANDIDATES)) + candidates
    listed = {c["movieId"] for c in candidates}
    unique: dict[int, dict] = {}
    for c in candidates:
        unique.setdefault(c["movieId"], c)
    candidates = list(unique.values())
    extra_rated = [mid for mid in given if mid not in listed]
    if extra_rated:
        known = [m for m in extra_rated if rec.movie_vocab.indices([m])[0] >= 0]
        candidates = (
            movie_records(rec.movies.iloc[rec.movie_vocab.indices(known)]) + candidates if known else candidates
        )
    lo, hi = rec.artifact.shape.rating_min, rec.artifact.shape.rating_max
    options = [float(v) for v in np.arange(np.ceil(lo), np.floor(hi) + 1)]
    context: dict[str, Any] = {
        "candidates": candidates,
        "given": given,
        "options": options,
        "q": q or "",
        "recs": [],
        "error": None,
    }
    if given:
        try:
            user = rec.fold_in(sorted(given.items()))
            context["recs"] = movie_records(rec.recommend_for(user, k=PAGE_K), "score", "rating")
            context["ranking"] = rec.ranking.describe()
        except EmbedrecError as exc:
            context["error"] = redact_paths(str(exc))
            return _render(request, "rate.html", context, status=422)
    return _render(request, "rate.html", context)


@page.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the key from the login form; on success keep it in a cookie the page's own requests send."""
    settings: ServeSettings = request.app.state.settings
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0]
    target = (form.get("next") or ["/"])[0]
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    if settings.api_key is None or key_matches(key, settings.api_key):
        response = RedirectResponse(target, status_code=303)
        if settings.api_key is not None:
            response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict")
        return response
    return templates.TemplateResponse(request, "login.html", {"error": "wrong key", "next": target}, status_code=401)
