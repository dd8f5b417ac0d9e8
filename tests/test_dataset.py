"""Finding, verifying and downloading the data set. Downloads go to a local http.server, never the internet."""

from __future__ import annotations

import functools
import gzip
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import chalicelib.data.dataset as dataset
from chalicelib.data.dataset import (
    CONTENT_SHA256,
    CSV_MEMBER,
    DatasetError,
    DatasetNotFound,
    content_sha256,
    locate,
    open_text,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $READMIT_DATA, an empty private cache, no shared copy, and a download URL nobody listens on."""
    monkeypatch.delenv("READMIT_DATA", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(dataset, "cache_dir", lambda: cache)
    monkeypatch.setattr(dataset, "SHARED_COPY", tmp_path / "no-shared-copy.zip", raising=False)
    monkeypatch.setattr(dataset, "UCI_URL", f"http://127.0.0.1:{closed_port()}/uci.zip")
    return cache


class Server:
    """A real HTTP server on 127.0.0.1 serving one folder, counting requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                outer.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = Server(root)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


@pytest.fixture(scope="module")
def csv_text(data_path: Path) -> str:
    """diabetic_data.csv exactly as shipped (CRLF line endings)."""
    with open_text(data_path) as fh:
        return fh.read()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- where the data is found ----------------------------------------------------------------------------
def test_an_explicit_path_beats_the_environment_and_the_cache(
    tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a file in each of the three places
    explicit, from_env = tmp_path / "explicit.csv", tmp_path / "env.csv"
    explicit.write_text("x")
    from_env.write_text("x")
    offline.mkdir()
    cached = offline / CSV_MEMBER
    cached.write_text("x")
    monkeypatch.setenv("READMIT_DATA", str(from_env))

    # THEN the explicit path wins, then $READMIT_DATA, then the cache
    assert locate(explicit) == explicit
    assert locate(str(explicit)) == explicit
    assert locate() == from_env
    monkeypatch.delenv("READMIT_DATA")
    assert locate() == cached


def test_the_cache_is_used_before_any_download(offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "UCI_URL", server.url("uci.zip"))
    offline.mkdir()
    (offline / CSV_MEMBER).write_text("x")
    assert locate() == offline / CSV_MEMBER
    assert server.requests == []


def test_the_provided_shared_copy_comes_after_the_cache_and_before_any_download(
    tmp_path: Path, offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared" / "dataset_diabetes.zip"
    shared.parent.mkdir()
    shared.write_text("x")
    monkeypatch.setattr(dataset, "SHARED_COPY", shared)
    monkeypatch.setattr(dataset, "UCI_URL", server.url("uci.zip"))

    assert locate() == shared
    offline.mkdir()
    (offline / CSV_MEMBER).write_text("x")
    assert locate() == offline / CSV_MEMBER
    assert server.requests == []


def test_an_explicit_path_that_does_not_exist_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "diabetic_data.csv"
    with pytest.raises(DatasetNotFound) as excinfo:
        locate(missing)
    assert str(missing) in str(excinfo.value)
    assert "--data" in str(excinfo.value)


def test_a_readmit_data_that_does_not_exist_is_named_and_not_skipped(
    tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a typo in $READMIT_DATA must not silently fall back to a cached copy
    offline.mkdir()
    (offline / CSV_MEMBER).write_text("x")
    missing = tmp_path / "typo.zip"
    monkeypatch.setenv("READMIT_DATA", str(missing))
    with pytest.raises(DatasetNotFound) as excinfo:
        locate()
    assert "$READMIT_DATA" in str(excinfo.value) and str(missing) in str(excinfo.value)


def test_nothing_found_without_download_fails_without_touching_the_network(
    offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a working download URL, but download=False
    monkeypatch.setattr(dataset, "UCI_URL", server.url("uci.zip"))

    with pytest.raises(DatasetNotFound) as excinfo:
        locate(download=False)

    assert server.requests == []
    assert files_in(offline) == []
    assert "--data" in str(excinfo.value) and "READMIT_DATA" in str(excinfo.value)


# ---- content hash ----------------------------------------------------------------------------------------
def test_the_shipped_zip_has_the_expected_content_hash(data_path: Path) -> None:
    assert content_sha256(data_path) == CONTENT_SHA256


@pytest.mark.slow
def test_the_content_hash_ignores_line_endings_and_container(csv_text: str, tmp_path: Path) -> None:
    # GIVEN the CSV extracted with CRLF (as shipped), converted to LF, and gzipped
    assert "\r\n" in csv_text
    crlf, lf, gz = tmp_path / "crlf.csv", tmp_path / "lf.csv", tmp_path / "lf.csv.gz"
    crlf.write_bytes(csv_text.encode())
    lf.write_bytes(csv_text.replace("\r\n", "\n").encode())
    gz.write_bytes(gzip.compress(lf.read_bytes(), compresslevel=1))

    # THEN all hash to the published content hash
    assert content_sha256(crlf) == content_sha256(lf) == content_sha256(gz) == CONTENT_SHA256


def test_the_content_hash_changes_when_one_value_changes(csv_text: str, tmp_path: Path) -> None:
    altered = tmp_path / "altered.csv"
    altered.write_text(csv_text.replace(",NO\r\n", ",<30\r\n", 1), newline="")
    assert content_sha256(altered) != CONTENT_SHA256


# ---- download -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_download_fetches_verifies_and_caches_the_csv(
    data_path: Path, offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the real data as UCI's zip, served over HTTP, and an empty cache
    if zipfile.is_zipfile(data_path):
        (server.root / "uci.zip").write_bytes(data_path.read_bytes())
    else:  # the data was found as the cached CSV: zip it as UCI does
        with zipfile.ZipFile(server.root / "uci.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.write(data_path, f"dataset_diabetes/{CSV_MEMBER}")
    monkeypatch.setattr(dataset, "UCI_URL", server.url("uci.zip"))

    # WHEN the data set is located
    found = locate()

    # THEN the CSV is downloaded once into the cache, verified, and beside it only the zip's code descriptions
    assert found == offline / CSV_MEMBER
    assert content_sha256(found) == CONTENT_SHA256
    with zipfile.ZipFile(server.root / "uci.zip") as zf:
        has_mapping = any(m.lower().endswith("ids_mapping.csv") for m in zf.namelist())
    expected = sorted([found, *([offline / "IDs_mapping.csv"] if has_mapping else [])])
    assert files_in(offline) == expected
    assert server.requests == ["/uci.zip"]
    # AND the next call uses the cache
    assert locate() == found
    assert server.requests == ["/uci.zip"]


@pytest.mark.slow
def test_a_download_whose_csv_was_altered_is_rejected_and_not_cached(
    csv_text: str, offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a zip whose CSV differs from the real one in a single outcome
    with zipfile.ZipFile(server.root / "uci.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(CSV_MEMBER, csv_text.replace(",NO\r\n", ",<30\r\n", 1))
    monkeypatch.setattr(dataset, "UCI_URL", server.url("uci.zip"))

    with pytest.raises(DatasetError) as excinfo:
        locate()

    assert excinfo.type is DatasetError  # untrusted, not merely missing
    assert CONTENT_SHA256 in str(excinfo.value)
    assert files_in(offline) == []


@pytest.mark.parametrize("where", ["closed port", "404 on a live server"])
def test_a_failed_download_says_where_to_put_the_file(
    where: str, offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "404 on a live server":
        monkeypatch.setattr(dataset, "UCI_URL", server.url("missing.zip"))
    # (otherwise the autouse fixture's URL points at a closed localhost port)

    with pytest.raises(DatasetNotFound) as excinfo:
        locate()

    message = str(excinfo.value)
    assert "download" in message
    assert "--data" in message and "READMIT_DATA" in message
    assert str(offline / CSV_MEMBER) in message
    assert files_in(offline) == []


def test_a_download_that_is_not_a_zip_is_a_dataset_error(
    offline: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (server.root / "uci.zip").write_text("<html>Please log in to the hotel Wi-Fi</html>")
    monkeypatch.setattr(dataset, "UCI_URL", server.url("uci.zip"))
    with pytest.raises(DatasetError):
        locate()


@pytest.mark.slow
def test_the_official_copy_is_kept_in_the_cache_where_a_clone_without_shared_finds_it(
    data_path: Path, offline: Path, tmp_path: Path
) -> None:
    # GIVEN the official zip somewhere, and a clone with no ../shared, no $READMIT_DATA and no network
    cached = dataset.keep_in_cache(data_path)
    # THEN the cache holds the plain CSV with the official content, and locating the data finds it offline
    assert cached == offline / dataset.CSV_MEMBER
    assert dataset.content_sha256(cached) == dataset.CONTENT_SHA256
    assert dataset.locate(download=False) == cached
    # AND a file with other content is never cached
    other = tmp_path / "other.csv"
    other.write_text(cached.read_text().replace("Caucasian", "caucasian", 1))
    (offline / dataset.CSV_MEMBER).unlink()
    with pytest.raises(dataset.DatasetError, match="sha256"):
        dataset.keep_in_cache(other)
    assert not (offline / dataset.CSV_MEMBER).exists()
