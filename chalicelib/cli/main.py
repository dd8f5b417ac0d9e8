"""`readmit`: the command line over the domain modules (each command parses, calls, prints).

This module is the entry point (``main``, the console script) and the parser's frame (--version, --debug, --json);
each command group lives in its own module beside it and adds its subcommands in ``register``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from chalicelib.cli import data, model, monitor, ops, registry, serve, similar
from chalicelib.cli.common import err
from chalicelib.core import settings


class _VersionAction(argparse.Action):
    """`readmit --version`: the installed package's version and, when a local registry has one, its champion
    (read from the alias file: no model is loaded, so no xgboost)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            line = f"readmit {version('readmit')}"
        except PackageNotFoundError:
            line = "readmit (not installed as a package)"
        uri = settings.registry_uri()
        if not uri.startswith("s3://") and Path(uri).expanduser().is_dir():
            from chalicelib.registry.registry import Registry

            with contextlib.suppress(Exception):  # an unreadable registry only leaves the champion out
                champion = Registry.open(Path(uri).expanduser(), validate=False).champion()
                line += f"\nchampion: {champion or 'none'} (registry {uri})"
        print(line)  # on stdout, as `--version` conventionally is (argparse.exit writes to stderr)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="readmit", description="30-day readmission risk for diabetic patients.")
    p.add_argument("--version", action=_VersionAction, help="print the package version (and the local champion)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors ($READMIT_DEBUG=1)")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False, parents=[debug])
    common.add_argument("--json", action="store_true", help="print the summary as JSON (default when piped)")
    subparsers = p.add_subparsers(dest="command", required=True)

    class _Sub:  # every subcommand takes --debug; all but smoke (which has its own) take --json
        @staticmethod
        def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
            return subparsers.add_parser(name, parents=[debug if name == "smoke" else common], **kwargs)

    sub = _Sub()

    for module in (data, model, monitor, similar, serve, registry, ops):  # the order `readmit --help` lists them
        module.register(sub)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean a user mistake (one line, exit 2), from the modules already imported: a module
    that was never imported cannot have raised, and importing it here would cost the fast start."""
    found: list[type[BaseException]] = [FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    for module, names in (
        ("chalicelib.data.dataset", ("DatasetError",)),
        ("chalicelib.model.bundle", ("BundleError",)),
        ("chalicelib.registry.registry", ("RegistryError",)),
        ("chalicelib.registry.loader", ("NoChampion",)),
        ("chalicelib.registry.model_check", ("InvalidModel",)),
        ("chalicelib.core.storage", ("StorageError",)),
        ("chalicelib.serving.auth", ("AuthConfigError",)),
    ):
        loaded = sys.modules.get(module)
        found.extend(getattr(loaded, name) for name in names if loaded is not None and hasattr(loaded, name))
    return tuple(found)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc.args[0]) if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return text.strip().replace("\n", " ") or type(exc).__name__


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (`readmit features | head -3`): stop quietly, as Unix tools do. Python's recipe:
    point stdout at devnull so the interpreter's final flush does not raise again
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parse, run one command, and keep user mistakes to one line on stderr (exit 2): no traceback unless
    --debug or READMIT_DEBUG=1, and then only for what is not a user mistake."""

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or settings.raw(settings.ENV_DEBUG) not in (None, "0")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        err("readmit: interrupted")
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            err(f"readmit {args.command}: {_message(exc)}")
            return 2
        if debug:
            raise
        err(
            f"readmit {args.command}: unexpected error ({type(exc).__name__}: {_message(exc)}); "
            "run with --debug or READMIT_DEBUG=1 for the traceback"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
