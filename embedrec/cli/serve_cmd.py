"""``embedrec serve``: parse the options, load the model once, hand it to :func:`embedrec.serve.run_server`.

FastAPI and uvicorn are imported inside the command, so ``embedrec --help`` stays instant.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from embedrec.cli.common import WorkdirOpt, app, err_console, handle_errors
from embedrec.cli.rec_cmds import DataOpt, ModelOpt
from embedrec.errors import ConfigError, Terminated

API_KEY_ENV = "EMBEDREC_API_KEY"  # kept equal to embedrec.serve.app.API_KEY_ENV (not imported: --help stays instant)


@app.command("serve")
@handle_errors
def serve_cmd(
    workdir: WorkdirOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind; another than 127.0.0.1 exposes the server to the network (use --api-key)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Processes, each with its own copy of the model.")
    ] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            help="Require 'Authorization: Bearer KEY' (16 characters or more) on every endpoint but /healthz, /docs, "
            "/redoc and /openapi.json (prefer the environment variable: options show in `ps`).",
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="Allow browser pages from this origin (repeatable; CORS is off without it)."
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
    ann: Annotated[
        bool,
        typer.Option(
            "--ann",
            help="Retrieve candidates from an approximate HNSW index (usearch: pip install 'embedrec\\[ann]'), built "
            "or read from the model folder when the model loads: for catalogues of millions.",
        ),
    ] = False,
) -> None:
    """Answer recommendations over HTTP (JSON API, docs at /docs, a small page at /) until SIGTERM or Ctrl-C.

    SIGHUP (or POST /admin/reload with the key) loads the newest run beside the served one and swaps when ready.

    A model that fails validation is refused, and the old one keeps serving.
    """
    if api_key is None and API_KEY_ENV in os.environ:  # set but empty: the CLI's parser reads that as unset
        api_key = os.environ[API_KEY_ENV]
    if api_key is not None and not api_key.strip():  # an empty $SECRET must not turn the key off without a word
        raise ConfigError(
            f"--api-key / {API_KEY_ENV} is blank: set a key of 16 characters or more, or unset it to serve without one"
        )
    api_key = api_key.strip() if api_key is not None else None
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        raise ConfigError(
            f"--api-key / {API_KEY_ENV} must be printable ASCII (HTTP headers carry no other text), e.g. `openssl "
            "rand -hex 16`"
        )
    if api_key is not None and len(api_key) < 16:
        raise ConfigError(f"--api-key / {API_KEY_ENV} must be at least 16 characters (e.g. `openssl rand -hex 16`)")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # concurrency comes from requests; see Scorer's BLAS note
    from embedrec.serve import ModelHolder, ModelSource, ServeSettings, run_server

    if ann:
        from embedrec import ann as ann_index

        ann_index.require()
    source = ModelSource(workdir=workdir, model=model, data=data, ann=ann)
    holder = ModelHolder(source)  # fails here, with one red line, before the port opens
    served = holder.current
    if served.prepared is None:
        err_console.print(
            "[yellow]note:[/] no prepared data found: seen movies are not filtered and unknown users "
            "get 404 instead of the cold-start list (pass --data DIR)"
        )
    settings = ServeSettings(
        api_key=api_key, cors_origins=tuple(cor for cor in (cors_origin or []) if cor), workers=workers, source=source
    )
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        err_console.print(f"[yellow]warning:[/] binding {host} without --api-key: anyone who can reach it may use it")
    err_console.print(
        f"serving model {served.run} ({len(served.rec.user_ids):,} users, {len(served.rec.movie_ids):,} "
        f"movies) on http://{_url_host(host)}:{port} (docs: /docs)",
        highlight=False,
        soft_wrap=True,
    )
    try:
        run_server(holder, settings, host=host, port=port, access_log=access_log)
    except Terminated:  # the server has stopped cleanly; serve writes nothing, so there is nothing to clean up
        err_console.print("stopped by SIGTERM (in-flight requests were finished)", highlight=False)
        raise typer.Exit(Terminated.exit_code) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
