"""What every command shares: printing a summary (JSON when piped, aligned text on a terminal), progress on stderr,
the project folder, and the shape of the subcommand registry each command module adds itself to."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol


class Subcommands(Protocol):
    """What a command module's ``register`` adds its subparsers to: ``build_parser`` gives each the shared
    options (--debug, --json) through it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def err(msg: str) -> None:
    """One line on stderr, flushed (messages, progress): stdout stays for the summary."""
    print(msg, file=sys.stderr, flush=True)


class Reporter:
    """Progress on stderr: tqdm bars when stderr is a terminal, plain step lines when it is not (logs, CI).

    Callable with a step line (what ``train``/``retrain``/``tune`` take as ``progress``); ``bar`` is found by
    ``train.progress_bar`` for long loops (boosting rounds, folds, trials)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, msg: str) -> None:
        err(msg)

    @contextlib.contextmanager
    def bar(self, total: int, desc: str, unit: str = "it") -> Iterator[Callable[[int], None]]:
        if not self.tty:
            err(f"{desc}: {total} {unit}…")
            yield _no_update
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False) as progress:
            yield progress.update


def _no_update(_n: int = 1) -> None:
    """A bar's update that draws nothing (stderr is not a terminal)."""


def text_lines(value: Any, indent: int = 0) -> list[str]:
    """A summary as aligned ``key  value`` lines; nested mappings indented under their key."""
    pad = " " * indent
    if not isinstance(value, dict):
        return [pad + _scalar(value)]
    width = max((len(str(k)) for k in value), default=0)
    lines = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{pad}{key}")
            lines.extend(text_lines(item, indent + 2))
        elif isinstance(item, list) and item and all(isinstance(i, dict) for i in item):
            lines.append(f"{pad}{key}")
            lines.extend(f"{pad}  " + ", ".join(f"{k}={_scalar(v)}" for k, v in i.items()) for i in item)
        else:
            lines.append(f"{pad}{str(key).ljust(width)}  {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    if isinstance(value, dict):
        return "-"
    return str(value)


def emit(args: argparse.Namespace, summary: Any) -> None:
    """Print a summary: JSON with --json or when stdout is not a terminal (pipes and scripts keep parsing it as
    before), aligned text on a terminal."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        print(json.dumps(summary, indent=2))
    elif isinstance(summary, list):
        print("\n".join(line for item in summary for line in [*text_lines(item), ""]))
    else:
        print("\n".join(text_lines(summary)))


def project_dir() -> Path:
    """The folder holding app.py and .chalice/ (chalicelib's parent)."""
    return Path(__file__).resolve().parents[2]
