"""Model registry over a Storage; the same layout works on a local folder and on S3.

    models/<version>/<files...>     one bundle; manifest.json is written last and marks it complete
    aliases/<alias>.json            {"alias", "version", "updated_at", "reason"}; one atomic object
    states/<version>.json           {"version", "state", "by", "reason", "at", "metadata"}: the approval state
    metrics/<version>.json          the gate's verdict and metrics for the candidate (SageMaker's ModelMetrics)
    history/<ts>-<hex8>.json        append-only events, one object each (S3 has no append)

A version's state is one of STATES: pending (passed the gate, awaiting a person), approved, rejected, champion
(the champion alias names it) and archived (a former champion). Every transition is a history event that says
who (``by``: a local user name, the gate, or an AWS identity with any e-mail address hashed), why and when.

Stdlib + boto3 only: the serving Lambda imports this module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chalicelib.core.storage import Storage, StorageKeyNotFound, open_storage

MANIFEST = "manifest.json"
CHAMPION = "champion"
PENDING, APPROVED, REJECTED, ARCHIVED = "pending", "approved", "rejected", "archived"
STATES = (PENDING, APPROVED, REJECTED, CHAMPION, ARCHIVED)
# Reserved for shadow scoring (a later step): the approved challenger the API scores beside the champion. An
# approved version that is not the champion is the candidate (``Registry.in_state(APPROVED)``).
SHADOW = "shadow"
GATE = "readmit-gate"  # ``by`` for the automatic gate's transitions
_EVENT_FIELDS = frozenset({"event", "alias", "version", "previous", "reason", "at", "by", "state", "previous_state"})


class RegistryError(Exception):
    """Base class for registry failures."""


class CorruptBundleError(RegistryError):
    """A bundle file is missing or does not match the sha256 in its manifest."""


class VersionExistsError(RegistryError):
    """The version is already registered; versions are immutable."""


class UnknownVersionError(RegistryError):
    """The version is not registered (or was only half uploaded)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_extra(extra: dict[str, Any] | None) -> dict[str, Any]:
    if clash := set(extra or {}) & _EVENT_FIELDS:
        raise ValueError(f"extra may not override event fields: {sorted(clash)}")
    return extra or {}


def _check_name(name: str, what: str) -> str:
    # Versions and aliases become single path segments; refuse anything that could nest or escape.
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise RegistryError(f"invalid {what}: {name!r}")
    return name


def _manifest_files(manifest: dict[str, Any]) -> dict[str, str]:
    """Validated {relative path: sha256}; paths may not escape the bundle or shadow the manifest."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptBundleError("manifest has no 'files' mapping")
    for rel in files:
        parts = rel.split("/")
        if rel == MANIFEST or rel.startswith("/") or "" in parts or ".." in parts or "." in parts:
            raise CorruptBundleError(f"invalid path in manifest: {rel!r}")
    return files


def _verify(files: dict[str, str], read: Any) -> dict[str, bytes]:
    """Read every manifest file via read(rel) and check its sha256; return the verified bytes."""
    blobs: dict[str, bytes] = {}
    for rel, expected in sorted(files.items()):
        try:
            data = read(rel)
        except (FileNotFoundError, IsADirectoryError, StorageKeyNotFound):
            raise CorruptBundleError(f"missing file: {rel}") from None
        if _sha256(data) != expected:
            raise CorruptBundleError(f"sha256 mismatch: {rel}")
        blobs[rel] = data
    return blobs


class Registry:
    """Immutable model versions, movable aliases and an append-only audit trail.

    ``validator`` (``model_check.require_valid`` when opened with ``Registry.open``) checks a bundle's model in a
    separate process before it is registered and before it becomes the champion: a model that would crash or
    mis-score the serving process is refused, whatever its hashes say. ``Registry(storage)`` alone checks only
    hashes (the registry's own contract, and tests that need to plant a broken champion)."""

    def __init__(self, storage: Storage, validator: Callable[[Path], object] | None = None) -> None:
        self.storage = storage
        self.validator = validator

    @classmethod
    def open(cls, uri: str | Path, s3_client: Any = None, *, validate: bool = True) -> Registry:
        """Registry at a local path or s3://bucket/prefix, validating models on register and promote."""
        validator = None
        if validate:
            from chalicelib.registry.model_check import require_valid  # stdlib on this side; the check runs in a child

            validator = require_valid
        return cls(open_storage(uri, s3_client), validator)

    # -- versions ------------------------------------------------------------------------------

    def register(self, bundle_dir: Path, version: str | None = None) -> str:
        """Upload a verified bundle; the manifest goes last so partial uploads stay invisible."""
        bundle_dir = Path(bundle_dir)
        try:
            raw = (bundle_dir / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise CorruptBundleError(f"no {MANIFEST} in {bundle_dir}") from None
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise CorruptBundleError(f"unreadable {MANIFEST} in {bundle_dir}") from None
        version = _check_name(version or manifest.get("version") or "", "version")
        files = _manifest_files(manifest)
        on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
        if unlisted := sorted(on_disk - set(files) - {MANIFEST}):
            raise CorruptBundleError(f"files not in manifest: {unlisted}")
        blobs = _verify(files, lambda rel: (bundle_dir / rel).read_bytes())
        if self.storage.exists(f"models/{version}/{MANIFEST}"):
            raise VersionExistsError(version)
        if self.validator is not None:  # before anything is written: a refused model leaves no trace
            self.validator(bundle_dir)
        if manifest.get("version") != version:  # the stored manifest names the version it lives under
            raw = json.dumps({**manifest, "version": version}, indent=2, sort_keys=True).encode()
        for rel, data in blobs.items():
            self.storage.write_bytes(f"models/{version}/{rel}", data)
        self.storage.write_bytes(f"models/{version}/{MANIFEST}", raw)
        self._record({"event": "registered", "version": version})
        return version

    def list_versions(self) -> list[str]:
        """Complete versions only: those whose manifest.json has been written."""
        keys = (key.split("/") for key in self.storage.list("models/"))
        return sorted(parts[1] for parts in keys if len(parts) == 3 and parts[2] == MANIFEST)

    def manifest(self, version: str) -> dict[str, Any]:
        """The stored manifest of a version."""
        return json.loads(self._manifest_bytes(version))

    def _manifest_bytes(self, version: str) -> bytes:
        try:
            return self.storage.read_bytes(f"models/{_check_name(version, 'version')}/{MANIFEST}")
        except StorageKeyNotFound:
            raise UnknownVersionError(version) from None

    def download(self, version: str, dest: Path) -> Path:
        """Fetch and verify a version into dest/<version>/; reuse an existing copy that verifies."""
        raw = self._manifest_bytes(version)
        files = _manifest_files(json.loads(raw))
        target = Path(dest) / version
        if self._verifies(target, files):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
        try:  # build the copy beside the target, then rename: readers never see a partial folder
            blobs = _verify(files, lambda rel: self.storage.read_bytes(f"models/{version}/{rel}"))
            for rel, data in {**blobs, MANIFEST: raw}.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
            if target.exists():  # a stale or corrupt copy: replace it
                shutil.rmtree(target)
            try:
                tmp.rename(target)
            except OSError:  # a concurrent download got there first; fine if its copy verifies
                if not self._verifies(target, files):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @staticmethod
    def _verifies(folder: Path, files: dict[str, str]) -> bool:
        if not (folder / MANIFEST).is_file():
            return False
        try:
            _verify(files, lambda rel: (folder / rel).read_bytes())
        except CorruptBundleError:
            return False
        return True

    # -- aliases -------------------------------------------------------------------------------

    def get_alias(self, alias: str) -> str | None:
        """Version an alias points to, or None if unset."""
        record = self.alias_record(alias)
        return record["version"] if record else None

    def alias_record(self, alias: str) -> dict[str, Any] | None:
        """The alias object ({"alias", "version", "updated_at", "reason"}), or None if unset."""
        try:
            return json.loads(self.storage.read_bytes(self._alias_key(alias)))
        except StorageKeyNotFound:
            return None

    def alias_etag(self, alias: str) -> str | None:
        """Cheap change detection for hot swap: metadata only, the alias is not downloaded."""
        return self.storage.etag(self._alias_key(alias))

    def set_alias(
        self, alias: str, version: str, reason: str, event: str = "alias", extra: dict[str, Any] | None = None
    ) -> None:
        """Point an alias at a registered version and record the move (with the previous target)."""
        if not self.storage.exists(f"models/{_check_name(version, 'version')}/{MANIFEST}"):
            raise UnknownVersionError(version)
        extra = _check_extra(extra)
        if alias == CHAMPION and self.validator is not None:
            self._validate_stored(version, self.validator)
        previous, at = self.get_alias(alias), _now()
        doc = {"alias": alias, "version": version, "updated_at": _iso(at), "reason": reason}
        self.storage.write_bytes(self._alias_key(alias), json.dumps(doc, indent=2).encode())
        fields = {"event": event, "alias": alias, "version": version, "previous": previous, "reason": reason}
        self._record({**fields, **extra}, at)

    def promote(
        self,
        version: str,
        reason: str,
        extra: dict[str, Any] | None = None,
        *,
        by: str = GATE,
        validate: bool = True,
    ) -> None:
        """Make a version the champion (what serving loads); the previous champion becomes archived.

        ``validate=False`` only where the caller has just validated the stored model (``approve``)."""
        extra = {**_check_extra(extra), "by": by}
        self._require(version)
        if validate and self.validator is not None:
            self._validate_stored(version, self.validator)
        previous, at = self.get_alias(CHAMPION), _now()
        doc = {"alias": CHAMPION, "version": version, "updated_at": _iso(at), "reason": reason}
        self.storage.write_bytes(self._alias_key(CHAMPION), json.dumps(doc, indent=2).encode())
        self._write_state(version, APPROVED, by, reason, at)
        fields = {"event": "promoted", "alias": CHAMPION, "version": version, "previous": previous, "reason": reason}
        self._record({**fields, **extra}, at)
        if previous and previous != version:
            self._transition(previous, ARCHIVED, f"replaced by {version} as champion", by, previous_state=CHAMPION)

    def approve(
        self, version: str, reason: str, *, by: str, extra: dict[str, Any] | None = None, validate: bool = True
    ) -> None:
        """Approve a candidate for promotion. The stored model is checked first (model_check): a model that would
        crash or mis-score serving is refused (InvalidModel) and nothing is recorded."""
        self._require(version)
        if validate and self.validator is not None:
            self._validate_stored(version, self.validator)
        self._transition(version, APPROVED, reason, by, extra)

    def check(self, version: str) -> None:
        """Validate a version's stored model (model_check) and record nothing: InvalidModel when it fails."""
        self._require(version)
        if self.validator is not None:
            self._validate_stored(version, self.validator)

    def set_pending(self, version: str, reason: str, *, by: str = GATE, extra: dict[str, Any] | None = None) -> None:
        """Passed the gate under the manual policy: the candidate waits for a person's approval."""
        self._transition(version, PENDING, reason, by, extra)

    def reject(self, version: str, reason: str, extra: dict[str, Any] | None = None, *, by: str = GATE) -> None:
        """Record that a candidate lost; aliases are left untouched."""
        self._transition(version, REJECTED, reason, by, extra)

    # -- states ----------------------------------------------------------------------------------

    def state(self, version: str) -> str:
        """One of STATES: champion when the champion alias names it, else its recorded state."""
        return self.states([version])[version]

    def states(self, versions: list[str] | None = None) -> dict[str, str]:
        """State per version (all complete versions by default). Versions registered before states were recorded
        take theirs from the history: promoted then replaced → archived, rejected → rejected, else pending."""
        versions = self.list_versions() if versions is None else versions
        champion, found, legacy = self.champion(), {}, []
        for version in versions:
            if version == champion:
                found[version] = CHAMPION
            elif (doc := self.state_record(version)) and doc.get("state"):
                found[version] = doc["state"]
            else:
                legacy.append(version)
        if legacy:
            last = {e["version"]: e["event"] for e in self.history() if e.get("event") in ("promoted", "rejected")}
            for version in legacy:
                found[version] = {"promoted": ARCHIVED, "rejected": REJECTED}.get(last.get(version, ""), PENDING)
        return found

    def state_record(self, version: str) -> dict[str, Any] | None:
        """The stored state document of a version (state, by, reason, at, metadata), or None."""
        try:
            return json.loads(self.storage.read_bytes(self._state_key(version)))
        except StorageKeyNotFound:
            return None

    def in_state(self, state: str) -> list[str]:
        """Versions in ``state``, oldest first (e.g. APPROVED: approved challengers not yet promoted)."""
        return [v for v, s in self.states().items() if s == state]

    def annotate(self, version: str, **metadata: Any) -> None:
        """Attach metadata to a version (its SageMaker model package ARN, an MLflow run id, ...); no transition."""
        self._require(version)
        doc = self.state_record(version) or {"version": version, "state": None}  # no transition yet
        doc["metadata"] = {**doc.get("metadata", {}), **metadata}
        self.storage.write_bytes(self._state_key(version), json.dumps(doc, indent=2).encode())

    def metadata(self, version: str) -> dict[str, Any]:
        return (self.state_record(version) or {}).get("metadata", {})

    def write_metrics(self, version: str, doc: dict[str, Any]) -> str:
        """Store the candidate's metrics document; returns its URI (what SageMaker's ModelMetrics points at)."""
        key = f"metrics/{_check_name(version, 'version')}.json"
        self.storage.write_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode())
        return f"{self.storage.uri.rstrip('/')}/{key}"

    def _transition(
        self,
        version: str,
        state: str,
        reason: str,
        by: str,
        extra: dict[str, Any] | None = None,
        previous_state: str | None = None,
    ) -> None:
        extra = _check_extra(extra)
        previous_state, at = previous_state or self.states([version])[version], _now()
        self._write_state(version, state, by, reason, at)
        fields = {"event": state, "version": version, "state": state, "previous_state": previous_state}
        self._record({**fields, "by": by, "reason": reason, **extra}, at)

    def _write_state(self, version: str, state: str, by: str, reason: str, at: datetime) -> None:
        if state not in STATES or state == CHAMPION:  # champion is the alias, not a stored state
            raise RegistryError(f"invalid state: {state!r}")
        metadata = (self.state_record(version) or {}).get("metadata", {})
        doc = {"version": version, "state": state, "by": by, "reason": reason, "at": _iso(at), "metadata": metadata}
        self.storage.write_bytes(self._state_key(version), json.dumps(doc, indent=2).encode())

    def _require(self, version: str) -> None:
        if not self.storage.exists(f"models/{_check_name(version, 'version')}/{MANIFEST}"):
            raise UnknownVersionError(version)

    @staticmethod
    def _state_key(version: str) -> str:
        return f"states/{_check_name(version, 'version')}.json"

    def champion(self) -> str | None:
        """Current champion version, or None before the first promotion."""
        return self.get_alias(CHAMPION)

    def _validate_stored(self, version: str, validator: Callable[[Path], object]) -> None:
        """Validate the stored copy (what serving will download), fetched and hash-checked into a temp folder."""
        with tempfile.TemporaryDirectory(prefix="readmit-promote-") as tmp:
            validator(self.download(version, Path(tmp)))

    @staticmethod
    def _alias_key(alias: str) -> str:
        return f"aliases/{_check_name(alias, 'alias')}.json"

    # -- history -------------------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """All events, oldest first (keys start with a sortable UTC timestamp)."""
        return [json.loads(self.storage.read_bytes(key)) for key in self.storage.list("history/")]

    def _record(self, event: dict[str, Any], at: datetime | None = None) -> None:
        at = at or _now()
        key = f"history/{at.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.json"
        self.storage.write_bytes(key, json.dumps({**event, "at": _iso(at)}, indent=2).encode())
