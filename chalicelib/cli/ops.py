"""The deployment's tools: `readmit invoke` (a template function run here, no Docker), `readmit smoke` (after a
deploy) and `readmit settings` (the effective READMIT_* configuration)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from chalicelib.cli.common import Subcommands, emit, err, project_dir


def cmd_invoke(args: argparse.Namespace) -> int:
    """`sam local invoke` without Docker: the response JSON on stdout, START/END/REPORT lines on stderr."""
    import os
    import uuid

    from chalicelib.cli import local_invoke
    from chalicelib.cli.sam_template import DevDependencyMissing, Template, TemplateError

    template_path = Path(args.template or ("template.yaml" if Path("template.yaml").exists() else project_dir()))
    template_path = template_path / "template.yaml" if template_path.is_dir() else template_path
    try:
        pairs = dict(_pairs(args.env, "--env"))
        template = Template(template_path, parameters=dict(_pairs(args.parameter, "--parameter")))
        logical_id = args.logical_id or (template.fixture_target(Path(args.event)) if args.event else None)
        if not logical_id:
            err("readmit invoke: name the function (LogicalId), or pass a fixture that maps to one")
            return 2
        spec = template.function(logical_id)
    except (DevDependencyMissing, TemplateError, ValueError) as exc:
        err(f"readmit invoke: {exc}")
        return 2
    event = json.loads(Path(args.event).read_text()) if args.event else {}
    unset = [k for k in spec.unresolved if k not in pairs and k not in os.environ]
    if unset:
        err(local_invoke.unset_message(spec, unset))
    request_id = str(uuid.uuid4())
    err(f"START RequestId: {request_id} Version: $LATEST")
    started = time.perf_counter()
    try:
        result = local_invoke.invoke(spec, event, pairs, request_id=request_id)
        text, status = json.dumps(result.response), 0
    except Exception as exc:  # the runtime reports any unhandled error as a payload; so do we
        text, status = json.dumps(local_invoke.error_payload(exc, request_id)), 1
    duration = (time.perf_counter() - started) * 1000
    err(f"END RequestId: {request_id}")
    err(f"REPORT RequestId: {request_id}\tDuration: {duration:.2f} ms\tMemory Size: {spec.memory} MB")
    if duration > spec.timeout * 1000:
        err(f"readmit invoke: took longer than the function's Timeout ({spec.timeout} s): Lambda would stop it")
    print(text)
    return status


def cmd_smoke(args: argparse.Namespace) -> int:
    """After a deploy: one call of each of the stack's services, and what passed (chalicelib/cli/smoke.py)."""
    from chalicelib.cli.smoke import SmokeOptions, main

    options = SmokeOptions(
        stack=args.stack, retrain=not args.no_retrain, batch=not args.no_batch, wait_seconds=args.wait
    )
    return main(options, args.region, args.json)


SETTINGS_COLUMNS = ("name", "value", "source", "doc")


def cmd_settings(args: argparse.Namespace) -> int:
    """Every READMIT_* variable with its effective value here (secrets masked by ``describe``), where the value comes
    from and what it means: what a component started in this environment would read."""
    from chalicelib.core.settings import SettingsError, describe

    try:
        rows = describe()
    except SettingsError as exc:  # a variable set to a value its setting cannot take: name it, as start-up would
        err(f"readmit settings: {exc}")
        return 2
    if getattr(args, "json", False) or not sys.stdout.isatty():  # emit's rule: JSON with --json or when piped
        emit(args, rows)
        return 0
    cells = [SETTINGS_COLUMNS, *[tuple(row[c] or "-" for c in SETTINGS_COLUMNS) for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(SETTINGS_COLUMNS) - 1)]
    print("\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]) for line in cells))
    return 0


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _pairs(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} takes NAME=VALUE, got {item!r}")
        pairs.append((name, value))
    return pairs


def register(sub: Subcommands) -> None:
    """invoke, smoke"""
    s = sub.add_parser("invoke", help="run a template.yaml function on an event here, without Docker")
    s.add_argument("logical_id", nargs="?", help="e.g. ApiFunction (default: the function the --event maps to)")
    s.add_argument("--event", "-e", help="event JSON file, e.g. events/api_health.json (default: {})")
    s.add_argument("--env", action="append", metavar="NAME=VALUE", help="set an environment variable (repeatable)")
    s.add_argument("--parameter", action="append", metavar="NAME=VALUE", help="override a template parameter")
    s.add_argument("--template", help="template.yaml (default: ./template.yaml, else the project's)")
    s.set_defaults(func=cmd_invoke)

    s = sub.add_parser("smoke", help="after a deploy: call the API, start a retraining, score a list; say what works")
    s.add_argument("--stack", required=True, help="the CloudFormation stack, e.g. readmit-dev")
    s.add_argument("--region", help="default: the AWS CLI's (AWS_REGION, the profile)")
    s.add_argument("--no-retrain", action="store_true", help="do not start a retraining")
    s.add_argument("--no-batch", action="store_true", help="do not upload a list for batch scoring")
    s.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS", help="wait for both runs (default 0)")
    s.add_argument("--json", action="store_true", help="print the checks as JSON")
    s.set_defaults(func=cmd_smoke)

    s = sub.add_parser("settings", help="print the effective configuration: every READMIT_* variable (secrets masked)")
    s.set_defaults(func=cmd_settings)
