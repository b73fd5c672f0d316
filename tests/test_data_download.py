"""`embedrec download` against a local HTTP server: extraction, checksum, resume, offline and HTTP errors."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedrec.cli import app
from embedrec.data import PrepareConfig, download, prepare
from embedrec.errors import ConfigError, DataError, DownloadError

RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5.0,964982224\n"
MOVIES = 'movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n2,"Heat, The (1995)",Action|Crime\n'


def make_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", RATINGS + "".join(f"3,{i % 2 + 1},3.0,{i}\n" for i in range(2000)))
        zf.writestr("ml-latest-small/movies.csv", MOVIES)
        zf.writestr("ml-latest-small/README.txt", "test archive")
    return buf.getvalue()


class Server:
    """Serves ``files`` on 127.0.0.1 with Range support; can cut the first transfer short to test resuming."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_first_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if outer.cut_first_after is not None and path_is_zip(self.path):
                    payload = payload[: outer.cut_first_after]
                    outer.cut_first_after = None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def path_is_zip(path: str) -> bool:
    return path.endswith(".zip")


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    archive = make_zip()
    s.files["/movielens/ml-latest-small.zip"] = archive
    s.files["/movielens/ml-latest-small.zip.md5"] = (
        f"MD5 (ml-latest-small.zip) = {hashlib.md5(archive).hexdigest()}\n".encode()
    )
    yield s
    s.close()


def test_download_verifies_extracts_and_prepare_finds_it(server: Server, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    res = download(
        "ml-latest-small", cache_dir=tmp_path / "cache", url=server.url, on_progress=lambda d, t: seen.append((d, t))
    )
    assert res.downloaded and res.verified
    assert (res.folder / "ratings.csv").is_file() and res.folder == tmp_path / "cache" / "ml-latest-small"
    assert not (tmp_path / "cache" / "ml-latest-small.zip.part").exists()
    assert seen[-1][0] == seen[-1][1] == len(server.files["/movielens/ml-latest-small.zip"])
    s = prepare("ml-latest-small", out=tmp_path / "data", config=PrepareConfig(), cache_dir=tmp_path / "cache")
    assert (s["source"], s["format"], s["n_movies"]) == ("ml-latest-small", "ml-csv", 2)
    # a second call uses the cache and needs no network
    server.close()
    again = download("ml-latest-small", cache_dir=tmp_path / "cache", url=server.url)
    assert not again.downloaded
    # with only the archive left in the cache, prepare reads the archive
    import shutil

    shutil.rmtree(res.folder)
    s = prepare("ml-latest-small", out=tmp_path / "data", config=PrepareConfig(), cache_dir=tmp_path / "cache")
    assert (s["source"], s["n_movies"]) == ("ml-latest-small", 2)


def test_interrupted_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    server.cut_first_after = 1000
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download("ml-latest-small", cache_dir=cache, url=server.url)
    part = cache / "ml-latest-small.zip.part"
    assert part.stat().st_size == 1000
    res = download("ml-latest-small", cache_dir=cache, url=server.url)
    assert res.verified
    assert ("/movielens/ml-latest-small.zip", "bytes=1000-") in server.requests
    assert (cache / "ml-latest-small.zip").read_bytes() == server.files["/movielens/ml-latest-small.zip"]


def test_force_replaces_the_cache_only_with_a_verified_archive(server: Server, tmp_path: Path) -> None:
    """``--force`` fetches again; while the new archive is not in hand and verified the cached one stays usable."""
    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=cache, url=server.url)
    archive, ratings = first.zip_path.read_bytes(), (first.folder / "ratings.csv").read_bytes()
    again = download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert again.downloaded and again.verified and again.zip_path.read_bytes() == archive
    del server.files["/movielens/ml-latest-small.zip"]  # the site fails (404) during a forced download
    with pytest.raises(DownloadError, match="HTTP 404"):
        download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert first.zip_path.read_bytes() == archive and (first.folder / "ratings.csv").read_bytes() == ratings
    server.files["/movielens/ml-latest-small.zip"] = archive + b"tampered"  # now the checksum does not match
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert first.zip_path.read_bytes() == archive and (first.folder / "ratings.csv").read_bytes() == ratings
    assert not download("ml-latest-small", cache_dir=cache, url=server.url).downloaded  # the cache serves as before


def test_checksum_mismatch_deletes_the_file(server: Server, tmp_path: Path) -> None:
    server.files["/movielens/ml-latest-small.zip.md5"] = b"0123456789abcdef0123456789abcdef  ml-latest-small.zip\n"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("ml-latest-small", cache_dir=tmp_path, url=server.url)
    assert not any(p.name.startswith("ml-latest-small.zip") for p in tmp_path.iterdir())


def test_missing_checksum_file_is_not_fatal(server: Server, tmp_path: Path) -> None:
    del server.files["/movielens/ml-latest-small.zip.md5"]
    res = download("ml-latest-small", cache_dir=tmp_path, url=server.url)
    assert res.downloaded and not res.verified


def test_http_error_and_corrupt_archive(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download("ml-1m", cache_dir=tmp_path, url=server.url)
    server.files["/movielens/ml-100k.zip"] = b"this is not a zip"
    with pytest.raises(DownloadError, match="not a valid zip"):
        download("ml-100k", cache_dir=tmp_path, url=server.url)
    assert not (tmp_path / "ml-100k.zip").exists()


def test_offline_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach .*check the network"):
        download("ml-latest-small", cache_dir=tmp_path, url=f"http://127.0.0.1:{port}", timeout=5)


def test_unknown_name_and_undownloaded_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ml-latest-small"):
        download("ml-99m", cache_dir=tmp_path)
    with pytest.raises(DataError, match="embedrec download ml-1m"):
        prepare("ml-1m", out=tmp_path / "d", config=PrepareConfig(), cache_dir=tmp_path / "empty")


def test_cli_download_then_prepare_by_name(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDREC_DOWNLOAD_URL", server.url)
    wd = str(tmp_path / "wd")
    runner = CliRunner()
    result = runner.invoke(app, ["download", "ml-latest-small", "--workdir", wd])
    assert result.exit_code == 0, result.output
    assert "checksum verified" in result.output
    result = runner.invoke(app, ["prepare", "ml-latest-small", "--workdir", wd, "--json"])
    assert result.exit_code == 0, result.output
    assert '"source": "ml-latest-small"' in result.output
    assert (tmp_path / "wd" / "data" / "summary.json").is_file()
    result = runner.invoke(app, ["download", "ml-7m", "--workdir", wd])
    assert result.exit_code == 2 and "unknown data set" in result.output


def test_fetch_without_registry_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from embedrec.data.recbole import fetch_ml100k
    from embedrec.errors import DownloadError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(DownloadError, match="recbole==1.2.1.*is PyPI reachable"):
        fetch_ml100k(tmp_path)
    assert not (tmp_path / "ml-100k").exists()


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_extracted_folder_is_replaced_only_while_it_holds_just_what_embedrec_wrote(
    server: Server, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=cache, url=server.url)
    assert (first.folder / ".embedrec-download.json").is_file()
    again = download("ml-latest-small", cache_dir=cache, url=server.url, force=True)  # only embedrec's files: replaced
    assert again.downloaded and sorted(p.name for p in cache.iterdir()) == ["ml-latest-small", "ml-latest-small.zip"]
    (first.folder / "notes.txt").write_text("my own notes\n")
    (first.folder / "extra").mkdir()
    before, requests = _listing(first.folder), len(server.requests)
    for force in (True, False):
        if not force:
            first.zip_path.unlink()  # an archive to fetch again: the folder would be replaced as well
        with pytest.raises(
            DownloadError,
            match=r"ml-latest-small holds files embedrec did not write \(extra/, notes\.txt\)"
            r": embedrec replaces only what it extracted; move them .*download ml-latest-small` again",
        ):
            download("ml-latest-small", cache_dir=cache, url=server.url, force=force)
        assert _listing(first.folder) == before and len(server.requests) == requests  # refused before fetching


def test_an_edited_file_is_the_users_and_is_not_replaced(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=cache, url=server.url)
    with open(first.folder / "ratings.csv", "a") as fh:
        fh.write("9,1,5.0,1000\n")
    before = _listing(first.folder)
    with pytest.raises(DownloadError, match=r"did not write \(ratings\.csv \(changed\)\)"):
        download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert _listing(first.folder) == before


def test_a_folder_embedrec_did_not_extract_is_refused(server: Server, tmp_path: Path) -> None:
    """The user's own copy of the release in the cache (or one an older embedrec extracted, its archive gone): no
    manifest, not replaced, nothing fetched."""
    folder = tmp_path / "cache" / "ml-latest-small"
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text(RATINGS)
    with pytest.raises(
        DownloadError,
        match=r"ml-latest-small was not extracted by embedrec \(it has no "
        r"\.embedrec-download\.json\): .*move them \(or the folder\) elsewhere",
    ):
        download("ml-latest-small", cache_dir=tmp_path / "cache", url=server.url)
    assert _listing(folder) == {"ratings.csv": RATINGS.encode()} and not server.requests
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-latest-small"]
    (folder / ".embedrec-download.json").write_text("[not json")  # a damaged manifest proves nothing either
    with pytest.raises(DownloadError, match=r"\.embedrec-download\.json is not a manifest embedrec wrote"):
        download("ml-latest-small", cache_dir=tmp_path / "cache", url=server.url, force=True)
    assert (folder / "ratings.csv").read_text() == RATINGS


def test_a_deleted_archive_is_fetched_again_and_replaces_embedrecs_folder(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=cache, url=server.url)
    (first.folder / "README.txt").unlink()  # a file embedrec wrote, gone: still only embedrec's files
    first.zip_path.unlink()
    again = download("ml-latest-small", cache_dir=cache, url=server.url)
    assert again.downloaded and (again.folder / "README.txt").read_text() == "test archive"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small", "ml-latest-small.zip"]


def test_a_folder_an_earlier_embedrec_extracted_is_refreshed(server: Server, tmp_path: Path) -> None:
    """A cache extracted before the manifest existed holds exactly what its cached archive extracts to: it is
    embedrec's, and ``--force`` replaces it (it was refused as the user's, with no way to refresh it but by hand).
    One that differs from the archive in any file is still the user's."""
    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=cache, url=server.url)
    (first.folder / ".embedrec-download.json").unlink()  # as an earlier embedrec left it
    (first.folder / "README.txt").unlink()  # a file of it deleted: still only embedrec's files
    again = download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert again.downloaded and (again.folder / "README.txt").read_text() == "test archive"
    assert (again.folder / ".embedrec-download.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small", "ml-latest-small.zip"]
    for change in ("edit", "add"):
        (again.folder / ".embedrec-download.json").unlink(missing_ok=True)
        if change == "edit":  # the same size, other bytes
            text = (again.folder / "movies.csv").read_text()
            (again.folder / "movies.csv").write_text(text.replace("Toy", "Boy"))
        else:
            (again.folder / "movies.csv").write_text(MOVIES)
            (again.folder / "notes.txt").write_text("mine\n")
        before, requests = _listing(again.folder), len(server.requests)
        with pytest.raises(DownloadError, match=r"was not extracted by embedrec \(it has no \.embedrec-download"):
            download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
        assert _listing(again.folder) == before and len(server.requests) == requests


def test_a_copied_or_touched_cache_is_still_embedrecs(server: Server, tmp_path: Path) -> None:
    """The manifest records each file's size and time; a cache copied without its times (``cp -r``) or a file
    touched was refused as "changed" although every byte is embedrec's. The bytes are compared with the cached
    archive before refusing; a file whose bytes changed is still the user's."""
    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=tmp_path / "old", url=server.url)
    cache.mkdir()
    shutil.copy(first.zip_path, cache / first.zip_path.name)
    shutil.copytree(first.folder, cache / "ml-latest-small", copy_function=shutil.copy)  # new times, as cp -r
    folder = cache / "ml-latest-small"
    os.utime(folder / "ratings.csv", ns=(1, 1))
    requests = len(server.requests)
    again = download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert again.downloaded and len(server.requests) == requests + 2  # the archive and its checksum
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small", "ml-latest-small.zip"]
    text = (folder / "movies.csv").read_text()
    (folder / "movies.csv").write_text(text.replace("Toy", "Boy"))  # the same size, other bytes
    os.utime(folder / "movies.csv", ns=(1, 1))
    before = _listing(folder)
    with pytest.raises(DownloadError, match=r"did not write \(movies\.csv \(changed\)\)"):
        download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert _listing(folder) == before


def test_a_file_saved_into_the_folder_while_the_archive_extracts_is_kept(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder was checked before the extraction (seconds for the large releases), then moved aside and deleted: a
    file the user saved into it meanwhile went with it. It is checked again once moved aside, and put back."""
    import embedrec.data.archives as archives

    cache = tmp_path / "cache"
    first = download("ml-latest-small", cache_dir=cache, url=server.url)
    extract_member = archives.extract_member

    def saving_meanwhile(*args: object) -> Path:
        (first.folder / "notes.txt").write_text("mine\n")
        return extract_member(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(archives, "extract_member", saving_meanwhile)
    with pytest.raises(DownloadError, match=r"cache/ml-latest-small holds files embedrec did not write \(notes\.txt\)"):
        download("ml-latest-small", cache_dir=cache, url=server.url, force=True)
    assert (first.folder / "notes.txt").read_text() == "mine\n" and (first.folder / "ratings.csv").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small", "ml-latest-small.zip"]  # the archive stays


def test_a_manifest_damaged_inside_proves_nothing(tmp_path: Path) -> None:
    """A manifest whose entry is no [size, mtime] pair is read as a changed file, not a TypeError traceback."""
    import json

    from embedrec.data.downloads import not_written_by_embedrec

    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(RATINGS)
    for entry in (5, None, "ab", [1]):
        doc = {"schema_version": 1, "archive": "x.zip", "files": {"ratings.csv": entry}, "dirs": []}
        (folder / ".embedrec-download.json").write_text(json.dumps(doc))
        assert not_written_by_embedrec(folder) == f"{folder} holds files embedrec did not write (ratings.csv (changed))"


@pytest.mark.parametrize(
    "members",
    [
        ["ml/ratings.csv", "ml/sub/movies.csv", "__MACOSX/ml/._ratings.csv", ".DS_Store"],  # unwrapped: ml/
        ["ratings.csv", "movies.csv"],  # nothing to unwrap
        ["ml/ratings.csv", "other/movies.csv"],  # two folders: nothing to unwrap
        ["ratings.csv"],  # a single file at the top is not unwrapped
    ],
)
def test_the_files_an_archive_extracts_to_are_what_extract_writes(tmp_path: Path, members: list[str]) -> None:
    """The adoption of a folder without a manifest compares it with what the archive extracts to: that listing and
    :func:`extract` unwrap a single top-level folder by one rule, and list the same files."""
    from embedrec.data.downloads import MANIFEST, _extracted_files, _walk, extract

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in members:
            zf.writestr(name, f"bytes of {name}\n")
    folder = extract(archive, tmp_path / "out")
    written = {rel for rel, st in _walk(folder).items() if not (folder / rel).is_dir() and rel != MANIFEST}
    assert written == set(_extracted_files(archive))
