"""``embedrec serve``: a trained model behind a small HTTP API (FastAPI on uvicorn) and an HTML page.

Synopsis::

    from pathlib import Path
    from embedrec.serve import ModelHolder, ModelSource, ServeSettings, create_app, run_server
    holder = ModelHolder(ModelSource(workdir=Path(".embedrec")))     # the latest run, loaded once, validated
    run_server(holder, ServeSettings(), host="127.0.0.1", port=8000)  # until SIGTERM / Ctrl-C

Modules: :mod:`~embedrec.serve.state` (the served model and its swap), :mod:`~embedrec.serve.schemas` (pydantic
request and response models), :mod:`~embedrec.serve.app` (JSON endpoints, errors, keys, limits),
:mod:`~embedrec.serve.page` (the HTML page), :mod:`~embedrec.serve.server` (uvicorn, signals, workers). Importing
this package imports FastAPI; the CLI imports it only inside ``embedrec serve``. JAX is never imported.
"""

from __future__ import annotations

from embedrec.serve.app import ServeSettings, create_app
from embedrec.serve.server import run_server
from embedrec.serve.state import LoadedModel, ModelHolder, ModelSource, ReloadOutcome

__all__ = ["LoadedModel", "ModelHolder", "ModelSource", "ReloadOutcome", "ServeSettings", "create_app", "run_server"]
