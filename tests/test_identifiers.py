"""Salted identifier hashing: stable links between records, never the identifier itself."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chalicelib.core.aws_clients import secret_string
from chalicelib.core.identifiers import (
    HASH_CHARS,
    CorruptSaltFile,
    EmptySalt,
    InvalidIdentifier,
    InvalidKind,
    hash_id,
    installation_salt,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("READMIT_HOME", str(tmp_path))
    monkeypatch.delenv("READMIT_ID_SALT", raising=False)
    return tmp_path


def test_the_same_input_gives_the_same_hash() -> None:
    assert hash_id(8222157, "pepper", kind="patient") == hash_id(8222157, "pepper", kind="patient")


def test_the_hash_is_a_truncated_hmac_sha256_of_kind_and_value() -> None:
    expected = hmac.new(b"pepper", b"patient:8222157", hashlib.sha256).hexdigest()[:32]
    digest = hash_id(8222157, "pepper", kind="patient")
    assert digest == expected
    assert len(digest) == HASH_CHARS == 32
    assert int(digest, 16) >= 0  # hex only


def test_a_different_salt_or_kind_gives_a_different_hash() -> None:
    base = hash_id(123, "pepper", kind="patient")
    assert hash_id(123, "salt", kind="patient") != base
    assert hash_id(123, "pepper", kind="encounter") != base
    assert hash_id(124, "pepper", kind="patient") != base


def test_integer_and_string_forms_of_an_identifier_hash_alike() -> None:
    forms = [123, "123", " 123 ", "0123", "123\n", np.int64(123)]
    assert len({hash_id(v, "pepper", kind="patient") for v in forms}) == 1  # type: ignore[arg-type]
    assert hash_id("AB-12", "pepper", kind="mrn") == hash_id(" AB-12 ", "pepper", kind="mrn")
    assert hash_id("AB-12", "pepper", kind="mrn") != hash_id("ab-12", "pepper", kind="mrn")  # case is kept


def test_the_hash_never_contains_the_raw_value() -> None:
    # UCI-sized identifiers (6 to 9 digits); hex digests could only contain them by coincidence
    values = [149190, 2278392, 8222157, 55629189, *range(100_000_000, 100_000_000 + 7919 * 2000, 7919)]
    for value in values:
        for kind in ("patient", "encounter"):
            digest = hash_id(value, "pepper", kind=kind)
            assert str(value) not in digest and kind not in digest


def test_empty_or_unhashable_identifiers_are_rejected() -> None:
    for bad in ("", "   ", None, 1.5, True):
        with pytest.raises(InvalidIdentifier):
            hash_id(bad, "pepper", kind="patient")  # type: ignore[arg-type]


def test_kinds_that_could_collide_are_rejected() -> None:
    with pytest.raises(InvalidKind):
        hash_id(1, "pepper", kind="")
    with pytest.raises(InvalidKind):
        hash_id(1, "pepper", kind="patient:1")  # would hash like kind="patient", value "1:..."


def test_an_explicit_empty_salt_is_rejected() -> None:
    with pytest.raises(EmptySalt):
        hash_id(1, "", kind="patient")


def test_the_environment_salt_is_used_when_none_is_given(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READMIT_ID_SALT", "from-env")
    assert hash_id(5, kind="patient") == hash_id(5, "from-env", kind="patient")
    assert not (home / "id_salt").exists()  # no installation salt is created when the env provides one
    assert hash_id(5, "explicit", kind="patient") != hash_id(5, kind="patient")  # explicit wins


@pytest.mark.slow
def test_the_installation_salt_is_created_private_on_first_use_and_reused(home: Path) -> None:
    salt_file = home / "id_salt"
    assert not salt_file.exists()  # importing the module created nothing

    first = hash_id(77, kind="patient")

    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip()
    assert len(salt) >= 32
    assert first == hash_id(77, salt, kind="patient")
    assert [p.name for p in home.iterdir()] == ["id_salt"]  # no temp files left behind

    # a new process (a restart) reads the same salt instead of making a new one
    env = {**os.environ, "READMIT_HOME": str(home)}
    env.pop("READMIT_ID_SALT", None)
    code = "from chalicelib.core.identifiers import hash_id; print(hash_id(77, kind='patient'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == first
    assert salt_file.read_text().strip() == salt


def test_different_installations_get_different_salts(tmp_path: Path) -> None:
    assert installation_salt(tmp_path / "a" / "id_salt") != installation_salt(tmp_path / "b" / "id_salt")


def test_an_empty_salt_file_is_an_error_not_silently_regenerated(tmp_path: Path) -> None:
    path = tmp_path / "id_salt"
    path.write_text("")
    with pytest.raises(CorruptSaltFile):
        installation_salt(path)
    assert path.read_text() == ""


def test_on_aws_the_salt_comes_from_secrets_manager_so_every_container_hashes_alike(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3
    from moto import mock_aws

    from chalicelib.core import identifiers

    monkeypatch.setenv("READMIT_HOME", str(tmp_path))
    monkeypatch.delenv("READMIT_ID_SALT", raising=False)
    secret_string.cache_clear()
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        arn = client.create_secret(Name="readmit-salt", SecretString="from-the-secret")["ARN"]
        monkeypatch.setenv("READMIT_ID_SALT_SECRET", arn)
        hashed = identifiers.hash_id(12345, kind="patient")
    secret_string.cache_clear()
    assert hashed == identifiers.hash_id(12345, "from-the-secret", kind="patient")
    assert not (tmp_path / "id_salt").exists()  # no per-container salt was made
