"""Resolve `--model DIR|URI` (a bundle folder, or a registry folder / s3:// URI) to a loaded bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chalicelib.core.settings import home
from chalicelib.model.bundle import MANIFEST, ModelBundle
from chalicelib.registry.model_check import require_valid
from chalicelib.registry.registry import Registry, UnknownVersionError


class NoChampion(LookupError):
    """The registry has no champion yet: train and register a model first."""


class ModelNotFound(NoChampion):
    """``--model`` names a local path that does not exist, or a folder that is neither a bundle nor a registry."""


def bundle_path(uri: str | Path, *, alias: str = "champion", cache: Path | None = None, s3_client: Any = None) -> Path:
    """A local folder holding the bundle ``uri`` names, downloading (and hash-checking) it if remote.

    ``uri`` is a bundle folder, a registry (its ``alias``, default the champion), or a registry's
    ``.../models/<version>``.
    """
    text = str(uri)
    if not text.startswith("s3://") and (Path(text).expanduser() / MANIFEST).is_file():
        return Path(text).expanduser()
    root, _, version = text.rstrip("/").rpartition("/models/")
    if not text.startswith("s3://"):
        _check_local(Path(root or text).expanduser(), text)
    registry = Registry.open(root if root else text, s3_client=s3_client)
    if not root:
        version = registry.get_alias(alias) or ""
        if not version:
            raise NoChampion(f"the registry at {text} has no {alias!r} model: run `readmit train --registry {text}`")
    try:
        return registry.download(version, cache or home() / "cache" / "models")
    except UnknownVersionError:
        known = ", ".join(registry.list_versions()) or "none"
        raise UnknownVersionError(f"no model version {version!r} in registry {root}; known: {known}") from None


def _check_local(folder: Path, text: str) -> None:
    """A local path that cannot be a model says so, instead of reading as an empty registry."""
    if not folder.exists():
        raise ModelNotFound(
            f"{text} does not exist (expected a model bundle folder or a registry, as `readmit train --registry` makes)"
        )
    if not folder.is_dir():
        raise ModelNotFound(f"{text} is a file: expected a model bundle folder or a registry")
    if not any((folder / name).exists() for name in ("models", "aliases", "history")) and any(folder.iterdir()):
        raise ModelNotFound(f"{text} is neither a model bundle (no {MANIFEST}) nor a registry (no models/ folder)")


def load_model(uri: str | Path, *, validate: bool = True, **kwargs: Any) -> ModelBundle:
    """The bundle ``uri`` names, loaded here only after a separate process has loaded and scored it
    (``model_check``): a broken model raises ``InvalidModel`` instead of killing this process."""
    folder = bundle_path(uri, **kwargs)
    if validate:
        require_valid(folder)
    return ModelBundle.load(folder)
