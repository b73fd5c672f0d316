"""Where things live by default: the work folder and its layout.

``<workdir>/data`` is the prepared data set, ``<workdir>/models/<run>`` the training runs, and
``<workdir>/models/latest`` a small text file naming the newest run (a file, not a symlink, so it works everywhere and
is replaced atomically).
"""

from __future__ import annotations

import os
from pathlib import Path

from embedrec.errors import ArtifactError, ConfigError
from embedrec.tempfiles import removed_on_failure, sweep_stale, temp_sibling

DEFAULT_WORKDIR = ".embedrec"
WORKDIR_ENV = "EMBEDREC_WORKDIR"
LATEST_FILE = "latest"
MAX_LATEST_BYTES = 4096  # a run folder name or path; anything longer is not a pointer embedrec wrote


def resolve_workdir(workdir: str | os.PathLike[str] | None) -> Path:
    """The explicit folder, else ``$EMBEDREC_WORKDIR``, else ``./.embedrec``; an existing non-folder is refused."""
    if workdir is not None:
        path, given = Path(workdir), "--workdir"
    else:
        path, given = (
            Path(os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR),
            (f"${WORKDIR_ENV}" if os.environ.get(WORKDIR_ENV) else "the default work folder"),
        )
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{given} {path} is a file, not a folder: pass a folder (it is created when missing)")
    return path


def data_dir(workdir: Path) -> Path:
    return workdir / "data"


def models_dir(workdir: Path) -> Path:
    return workdir / "models"


def downloads_dir(workdir: Path) -> Path:
    """Cache of downloaded MovieLens archives (``$EMBEDREC_CACHE`` overrides)."""
    env = os.environ.get("EMBEDREC_CACHE")
    return Path(env) if env else workdir / "downloads"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    with removed_on_failure(temp_sibling(path), target=path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def set_latest_run(workdir: Path, run_dir: Path) -> None:
    """Record ``run_dir`` as the run that later commands use by default."""
    target = run_dir.resolve()
    try:
        value = str(target.relative_to(models_dir(workdir).resolve()))
    except ValueError:
        value = str(target)
    atomic_write_text(models_dir(workdir) / LATEST_FILE, value + "\n")


def latest_run(workdir: Path) -> Path:
    """The newest training run of this work folder, or a clear error saying how to make one."""
    marker = models_dir(workdir) / LATEST_FILE
    if not marker.is_file():
        raise ArtifactError(
            f"no trained model in {models_dir(workdir)}: run `embedrec train` first, or pass --model DIR"
        )
    with open(marker, "rb") as fh:
        raw = fh.read(MAX_LATEST_BYTES + 1)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = ""
    if not name or len(raw) > MAX_LATEST_BYTES or "\x00" in name or "\n" in name:
        raise ArtifactError(
            f"{marker} is not a run pointer written by embedrec (expected one run folder name): "
            "delete it and retrain, or pass --model DIR"
        )
    run = Path(name) if os.path.isabs(name) else models_dir(workdir) / name
    try:
        exists = run.is_dir()
    except OSError:  # e.g. a component longer than the file system allows
        exists = False
    if not exists:
        raise ArtifactError(f"{marker} names {run}, which does not exist: retrain, or pass --model DIR")
    return run
