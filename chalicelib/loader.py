"""Resolve `--model DIR|URI` (a bundle folder, or a registry folder / s3:// URI) to a loaded bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundle import MANIFEST, ModelBundle
from .model_check import require_valid
from .registry import Registry
from .settings import home


class NoChampion(LookupError):
    """The registry has no champion yet: train and register a model first."""


def bundle_path(uri: str | Path, *, alias: str = "champion", cache: Path | None = None, s3_client: Any = None) -> Path:
    """A local folder holding the bundle ``uri`` names, downloading (and hash-checking) it if remote.

    ``uri`` is a bundle folder, a registry (its ``alias``, default the champion), or a registry's
    ``.../models/<version>``.
    """
    text = str(uri)
    if not text.startswith("s3://") and (Path(text).expanduser() / MANIFEST).is_file():
        return Path(text).expanduser()
    root, _, version = text.rstrip("/").rpartition("/models/")
    registry = Registry.open(root if root else text, s3_client=s3_client)
    if not root:
        version = registry.get_alias(alias) or ""
        if not version:
            raise NoChampion(f"the registry at {text} has no {alias!r} model: run `readmit train --registry {text}`")
    return registry.download(version, cache or home() / "cache" / "models")


def load_model(uri: str | Path, *, validate: bool = True, **kwargs: Any) -> ModelBundle:
    """The bundle ``uri`` names, loaded here only after a separate process has loaded and scored it
    (``model_check``): a broken model raises ``InvalidModel`` instead of killing this process."""
    folder = bundle_path(uri, **kwargs)
    if validate:
        require_valid(folder)
    return ModelBundle.load(folder)
