"""Finding, verifying and reading the UCI data set; raw rows → parsed records with row-numbered errors.

The data never enters the repository. It is found, in order: an explicit path, ``$READMIT_DATA``, the
user cache, else UCI's official download (checked by the content hash of ``diabetic_data.csv``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from chalicelib.core.settings import ENV_DATA, Settings

UCI_URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
# sha256 of diabetic_data.csv with carriage returns removed (the archive's packing and line endings vary).
CONTENT_SHA256 = "da21942c25a10a51a8842907ab01a8530b06232616b17d317441d592a20c4359"
CSV_MEMBER = "diabetic_data.csv"
# The copy provided beside the project on CI and development machines (read-only; used when present).
SHARED_COPY = Path(__file__).resolve().parents[3] / "shared" / "data" / "dataset_diabetes.zip"


class DatasetError(Exception):
    """The data set cannot be found, read or trusted."""


class DatasetNotFound(DatasetError):
    """No data set locally and it could not be downloaded."""


class DatasetSchemaError(DatasetError):
    """The file's header does not match the UCI schema."""


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("readmit"))


def locate(path: str | Path | None = None, *, download: bool = True) -> Path:
    """Where the data set is: explicit path, $READMIT_DATA, the cache, the provided ../shared copy, else a
    verified download from UCI."""
    for candidate, origin in ((path, "--data"), (Settings.from_env().data, f"${ENV_DATA}")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.exists():
                raise DatasetNotFound(f"{origin} points to {p}, which does not exist")
            if p.is_dir():
                raise DatasetError(f"{origin} points to {p}, a folder: give the UCI zip, .csv or .csv.gz file")
            return p
    cached = cache_dir() / CSV_MEMBER
    if cached.exists():
        return cached
    if SHARED_COPY.exists():
        return SHARED_COPY
    if not download:
        raise DatasetNotFound(_where_to_put_it(cached))
    try:
        return _download(cached)
    except OSError as exc:
        raise DatasetNotFound(f"download from UCI failed ({exc}).\n{_where_to_put_it(cached)}") from exc


def _where_to_put_it(cached: Path) -> str:
    return (
        "The UCI 'Diabetes 130-US hospitals' data set was not found. Either pass --data PATH "
        f"(the UCI zip, diabetic_data.csv or .csv.gz), set {ENV_DATA}=PATH, or put diabetic_data.csv at "
        f"{cached}. Official download: {UCI_URL}"
    )


def _download(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "uci.zip"
        with urllib.request.urlopen(UCI_URL, timeout=60) as resp, archive.open("wb") as out:
            shutil.copyfileobj(resp, out)
        try:
            _store_official(archive, target)
            _keep_ids_mapping(archive)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise DatasetError(f"the download from {UCI_URL} is not a valid zip archive ({exc})") from exc
    return target


def _store_official(source: Path, target: Path) -> None:
    """``source`` (zip, csv or csv.gz) as plain CSV at ``target``, only if it is the official content (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        extracted = Path(tmp) / CSV_MEMBER
        with open_text(source) as src, extracted.open("w", newline="") as out:
            shutil.copyfileobj(src, out)
        digest = content_sha256(extracted)
        if digest != CONTENT_SHA256:
            raise DatasetError(f"{source.name} has content sha256 {digest}, expected {CONTENT_SHA256}")
        os.replace(extracted, target)


def keep_in_cache(path: Path) -> Path:
    """Copy a verified official data set into the user cache (once), so that clones elsewhere on this machine, and
    runs without ../shared or a network, find it there."""
    cached = cache_dir() / CSV_MEMBER
    if not cached.exists() and path.resolve() != cached.resolve():
        _store_official(path, cached)
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        _keep_ids_mapping(path)
    return cached


IDS_MAPPING_MEMBER = "IDs_mapping.csv"


def _keep_ids_mapping(archive: Path) -> None:
    """The zip's IDs_mapping.csv (the code descriptions explanations use) beside the cached CSV, so that a clone
    without the zip can still check chalicelib/model/ids_mapping.json against the data set's own file."""
    target = cache_dir() / IDS_MAPPING_MEMBER
    if target.exists():
        return
    with zipfile.ZipFile(archive) as zf:
        member = next((m for m in zf.namelist() if m.lower().endswith(IDS_MAPPING_MEMBER.lower())), None)
        if member is None:
            return
        text = zf.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, target)


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """Text stream of the CSV inside a zip, a .csv.gz or a plain .csv; newline='' keeps CRLF handling to csv."""
    name = path.name.lower()
    if name.endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"{path} is not a zip archive")
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(CSV_MEMBER)]
            if not members:
                raise DatasetError(f"{path} holds no {CSV_MEMBER}")
            with zf.open(members[0]) as raw:
                yield io.TextIOWrapper(raw, encoding="utf-8", newline="")
    elif name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            yield fh
    else:
        with path.open(encoding="utf-8", newline="") as fh:
            yield fh


def content_sha256(path: Path) -> str:
    """sha256 of the CSV text with carriage returns removed: the same for CRLF, LF, zip or gzip copies."""
    digest = hashlib.sha256()
    with open_text(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), ""):
            digest.update(chunk.replace("\r", "").encode("utf-8"))
    return digest.hexdigest()
