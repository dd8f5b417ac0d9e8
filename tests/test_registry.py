"""One contract suite for the model registry, run against a local folder and (moto) S3."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.core.storage import LocalStorage, S3Storage, Storage, StorageKeyNotFound, open_storage
from chalicelib.registry.registry import (
    CorruptBundleError,
    Registry,
    UnknownVersionError,
    VersionExistsError,
)
from tests.helpers import moto_s3

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "registry")
        return
    with moto_s3("models") as client:
        yield S3Storage("models", "registry", client)


@pytest.fixture
def registry(storage: Storage) -> Registry:
    return Registry(storage)


class SpyStorage:
    """Delegates to a real storage and records which keys were downloaded."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.reads: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def read_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return self.inner.read_bytes(key)


def make_bundle(root: Path, version: str, seed: str = "a") -> Path:
    """A small bundle with a nested plot and a manifest holding correct sha256s."""
    folder = root / f"bundle-{version}-{seed}"
    files = {
        "model.json": json.dumps({"trees": [1, 2, 3], "seed": seed}).encode(),
        "metrics.json": json.dumps({"auc": 0.68}).encode(),
        "plots/roc.png": PNG + seed.encode(),
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    manifest = {
        "version": version,
        "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()},
        "trained_at": "2024-01-01T00:00:00Z",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def bundle_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_registered_bundle_round_trips_byte_for_byte(registry: Registry, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "v1")

    assert registry.register(bundle) == "v1"
    assert registry.list_versions() == ["v1"]
    assert registry.manifest("v1")["trained_at"] == "2024-01-01T00:00:00Z"

    folder = registry.download("v1", tmp_path / "cache")

    assert folder == tmp_path / "cache" / "v1"
    assert bundle_bytes(folder) == bundle_bytes(bundle)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["v1"]  # no temp dirs left
    assert registry.history()[0]["event"] == "registered"


@pytest.mark.slow
def test_the_layout_is_models_aliases_and_history_on_every_backend(
    registry: Registry, storage: Storage, tmp_path: Path
) -> None:
    registry.register(make_bundle(tmp_path, "v1"))
    registry.promote("v1", "first model")

    keys = storage.list("")

    assert [k for k in keys if k.startswith("models/")] == [
        "models/v1/manifest.json",
        "models/v1/metrics.json",
        "models/v1/model.json",
        "models/v1/plots/roc.png",
    ]
    assert [k for k in keys if k.startswith("aliases/")] == ["aliases/champion.json"]
    assert len([k for k in keys if k.startswith("history/")]) == 2
    alias = json.loads(storage.read_bytes("aliases/champion.json"))
    assert alias["version"] == "v1"
    assert alias["reason"] == "first model"
    assert alias["updated_at"].endswith("Z")


@pytest.mark.parametrize("damage", ["tamper", "delete", "unlisted"])
@pytest.mark.slow
def test_a_corrupt_bundle_is_refused_before_anything_is_written(
    registry: Registry, storage: Storage, tmp_path: Path, damage: str
) -> None:
    bundle = make_bundle(tmp_path, "v1")
    if damage == "tamper":
        (bundle / "plots" / "roc.png").write_bytes(b"not the plot that was hashed")
    elif damage == "delete":
        (bundle / "metrics.json").unlink()
    else:
        (bundle / "stray.bin").write_bytes(b"not in the manifest")

    with pytest.raises(CorruptBundleError):
        registry.register(bundle)

    assert storage.list("") == []
    assert registry.list_versions() == []


@pytest.mark.slow
def test_an_existing_version_cannot_be_overwritten(registry: Registry, storage: Storage, tmp_path: Path) -> None:
    registry.register(make_bundle(tmp_path, "v1", seed="original"))
    stored = storage.read_bytes("models/v1/model.json")

    with pytest.raises(VersionExistsError):
        registry.register(make_bundle(tmp_path, "v1", seed="impostor"))

    assert storage.read_bytes("models/v1/model.json") == stored
    assert [e["event"] for e in registry.history()] == ["registered"]


def test_an_explicit_version_overrides_the_manifest(registry: Registry, tmp_path: Path) -> None:
    registry.register(make_bundle(tmp_path, "v1"), version="2024-06-01-abc")

    assert registry.list_versions() == ["2024-06-01-abc"]
    assert registry.manifest("2024-06-01-abc")["version"] == "2024-06-01-abc"
    registry.download("2024-06-01-abc", tmp_path / "cache")  # still verifies


def test_a_tampered_artifact_is_refused_on_download(registry: Registry, storage: Storage, tmp_path: Path) -> None:
    registry.register(make_bundle(tmp_path, "v1"))
    storage.write_bytes("models/v1/plots/roc.png", b"swapped after registration")
    dest = tmp_path / "cache"

    with pytest.raises(CorruptBundleError, match=r"plots/roc\.png"):
        registry.download("v1", dest)

    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.slow
def test_a_missing_artifact_is_refused_on_download(registry: Registry, tmp_path: Path) -> None:
    registry.register(make_bundle(tmp_path, "v1"))
    # Rewrite the stored manifest so it lists a file the version never stored.
    manifest = registry.manifest("v1")
    manifest["files"]["ghost.bin"] = hashlib.sha256(b"boo").hexdigest()
    registry.storage.write_bytes("models/v1/manifest.json", json.dumps(manifest).encode())

    with pytest.raises(CorruptBundleError, match=r"ghost\.bin"):
        registry.download("v1", tmp_path / "cache")

    assert not (tmp_path / "cache" / "v1").exists()


def test_a_verified_local_copy_is_reused_and_a_damaged_one_is_replaced(
    registry: Registry, storage: Storage, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "v1")
    registry.register(bundle)
    folder = registry.download("v1", tmp_path / "cache")

    (folder / "model.json").write_bytes(b"bit rot")
    assert bundle_bytes(registry.download("v1", tmp_path / "cache")) == bundle_bytes(bundle)

    # With the remote copy now corrupt, only reusing the verified local copy can succeed.
    storage.write_bytes("models/v1/model.json", b"remote bit rot")
    assert registry.download("v1", tmp_path / "cache") == folder
    assert bundle_bytes(folder) == bundle_bytes(bundle)


@pytest.mark.slow
def test_promotion_records_the_previous_champion_in_history_order(registry: Registry, tmp_path: Path) -> None:
    for version in ("v1", "v2", "v3"):
        registry.register(make_bundle(tmp_path, version))

    assert registry.champion() is None
    registry.promote("v1", "bootstrap")
    registry.promote("v2", "higher AUC", extra={"auc": 0.71})
    registry.reject("v3", "calibration worse", extra={"ece": 0.09})

    assert registry.champion() == "v2"
    events = registry.history()
    assert [(e["event"], e["version"]) for e in events] == [
        ("registered", "v1"),
        ("registered", "v2"),
        ("registered", "v3"),
        ("promoted", "v1"),
        ("promoted", "v2"),
        ("archived", "v1"),  # the replaced champion
        ("rejected", "v3"),
    ]
    assert events[3]["previous"] is None
    assert events[4]["previous"] == "v1"
    assert registry.states() == {"v1": "archived", "v2": "champion", "v3": "rejected"}
    assert events[4]["reason"] == "higher AUC"
    assert events[4]["auc"] == 0.71
    assert events[6]["ece"] == 0.09
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert all(e["at"].endswith("Z") for e in events)


def test_extra_fields_cannot_rewrite_the_event(registry: Registry, tmp_path: Path) -> None:
    registry.register(make_bundle(tmp_path, "v1"))

    with pytest.raises(ValueError, match="version"):
        registry.promote("v1", "sneaky", extra={"version": "v0"})

    assert registry.champion() is None


@pytest.mark.slow
def test_the_alias_etag_changes_after_promotion_without_downloading(storage: Storage, tmp_path: Path) -> None:
    spy = SpyStorage(storage)
    registry = Registry(spy)
    registry.register(make_bundle(tmp_path, "v1"))
    registry.register(make_bundle(tmp_path, "v2"))

    assert registry.alias_etag("champion") is None
    registry.promote("v1", "bootstrap")
    first = registry.alias_etag("champion")
    registry.promote("v2", "better")
    spy.reads.clear()

    second = registry.alias_etag("champion")

    assert first is not None
    assert second not in (None, first)
    assert registry.alias_etag("champion") == second  # stable while nothing changes
    assert spy.reads == []


def test_an_unknown_version_cannot_be_aliased(registry: Registry, storage: Storage, tmp_path: Path) -> None:
    registry.register(make_bundle(tmp_path, "v1"))
    storage.write_bytes("models/v2/model.json", b"half uploaded, no manifest")

    for version in ("nope", "v2"):
        with pytest.raises(UnknownVersionError):
            registry.set_alias("staging", version, "should fail")

    assert registry.get_alias("staging") is None
    assert [e["event"] for e in registry.history()] == ["registered"]
    with pytest.raises(UnknownVersionError):
        registry.manifest("nope")


@pytest.mark.slow
def test_an_upload_that_dies_midway_leaves_no_visible_version(storage: Storage, tmp_path: Path) -> None:
    class DiesOnThirdWrite(SpyStorage):
        writes = 0

        def write_bytes(self, key: str, data: bytes) -> None:
            self.writes += 1
            if self.writes == 3:
                raise ConnectionError("network gone")
            self.inner.write_bytes(key, data)

    with pytest.raises(ConnectionError):
        Registry(DiesOnThirdWrite(storage)).register(make_bundle(tmp_path, "v1"))

    registry = Registry(storage)
    assert storage.list("models/")  # some files did land...
    assert registry.list_versions() == []  # ...but without a manifest the version does not exist
    assert registry.register(make_bundle(tmp_path, "v1")) == "v1"  # and a retry completes it


def test_a_half_uploaded_version_is_not_listed_and_can_be_retried(
    registry: Registry, storage: Storage, tmp_path: Path
) -> None:
    registry.register(make_bundle(tmp_path, "v1"))
    storage.write_bytes("models/v2/model.json", b"upload died before the manifest")

    assert registry.list_versions() == ["v1"]

    registry.register(make_bundle(tmp_path, "v2"))
    assert registry.list_versions() == ["v1", "v2"]


@pytest.mark.slow
def test_a_missing_key_raises_a_key_error_and_has_no_etag(storage: Storage) -> None:
    with pytest.raises(StorageKeyNotFound) as raised:
        storage.read_bytes("aliases/champion.json")

    assert isinstance(raised.value, KeyError)
    assert storage.etag("aliases/champion.json") is None
    assert not storage.exists("aliases/champion.json")
    assert storage.list("") == []


def test_listing_is_recursive_sorted_and_prefix_scoped(storage: Storage) -> None:
    for key in ("b/2.txt", "a/deep/er/1.txt", "a/0.txt", "ab/3.txt"):
        storage.write_bytes(key, key.encode())

    assert storage.list("") == ["a/0.txt", "a/deep/er/1.txt", "ab/3.txt", "b/2.txt"]
    assert storage.list("a/") == ["a/0.txt", "a/deep/er/1.txt"]
    assert storage.list("a") == ["a/0.txt", "a/deep/er/1.txt", "ab/3.txt"]
    assert storage.list("missing/") == []


@pytest.mark.slow
def test_an_s3_prefix_does_not_see_sibling_prefixes() -> None:
    with moto_s3("models") as client:
        client.put_object(Bucket="models", Key="registry-old/models/v0/manifest.json", Body=b"{}")

        assert Registry.open("s3://models/registry", s3_client=client).list_versions() == []


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "normalised"),
    [
        ("s3://models/registry", "models", "registry", "s3://models/registry"),
        ("s3://models/team/registry/", "models", "team/registry", "s3://models/team/registry"),
        ("s3://models", "models", "", "s3://models"),
    ],
)
def test_open_storage_parses_s3_uris_without_connecting(uri: str, bucket: str, prefix: str, normalised: str) -> None:
    storage = open_storage(uri)

    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.uri) == (bucket, prefix, normalised)
    assert storage._client is None  # created lazily, on first use


def test_open_storage_treats_other_uris_as_local_folders_without_creating_them(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "not-yet")

    assert isinstance(storage, LocalStorage)
    assert storage.uri == str((tmp_path / "not-yet").resolve())
    assert not (tmp_path / "not-yet").exists()
    assert open_storage("~/registry").root == Path.home() / "registry"
