"""`readmit registry`: versions, states and history; promote, approve, reject, shadow (who and why recorded)."""

from __future__ import annotations

import argparse
import contextlib

from chalicelib.cli.common import Subcommands, emit, err
from chalicelib.core import settings


def _local_user() -> str:
    """Who, for the registry history: the local user name (an e-mail-like name is hashed, as AWS identities are)."""
    import getpass

    from chalicelib.registry.sagemaker import actor

    with contextlib.suppress(Exception):
        return actor({"UserProfileName": f"local:{getpass.getuser()}"})
    return "local:unknown"


def cmd_registry(args: argparse.Namespace) -> int:
    from chalicelib.lifecycle import promotion
    from chalicelib.registry.model_check import InvalidModel
    from chalicelib.registry.registry import Registry, UnknownVersionError

    registry = Registry.open(settings.registry_uri(args.registry))
    if args.action == "list":
        aliases = {a: registry.get_alias(a) for a in ("champion", "challenger", "shadow")}
        emit(args, {"versions": registry.list_versions(), "states": registry.states(), "aliases": aliases})
    elif args.action == "history":
        emit(args, registry.history())
    elif args.action == "shadow":  # an approved challenger scored beside the champion (README "Shadow")
        from chalicelib.registry.registry import APPROVED, SHADOW

        if not args.version or not (args.reason or "").strip():
            err("readmit registry shadow: needs a VERSION and --reason")
            return 2
        if registry.state(args.version) != APPROVED:
            err(f"readmit registry shadow: {args.version} is {registry.state(args.version)}; only an approved one")
            return 2
        registry.set_alias(SHADOW, args.version, f"{args.reason.strip()} (by {_local_user()})", event="shadow")
        emit(args, {"shadow": args.version, "champion": registry.champion()})
    elif args.action in ("promote", "approve", "reject"):
        if not args.version:
            err(f"{args.action} needs a VERSION")
            return 2
        if args.action in ("approve", "reject") and not (args.reason or "").strip():
            err(f"readmit registry {args.action}: --reason is required (it is recorded with who and when)")
            return 2
        try:  # the stored model is loaded and scored in a separate process first (promote, approve)
            if args.action == "promote":
                registry.promote(args.version, args.reason or "manual promotion", by=_local_user())
                emit(args, {"champion": registry.champion()})
            else:
                if args.action == "approve":
                    from chalicelib.core.audit import open_prediction_log

                    log = open_prediction_log(None) if promotion.shadow_required() else None
                    result = promotion.approve(registry, args.version, args.reason.strip(), by=_local_user(), log=log)
                    emit(args, result)
                else:
                    emit(args, promotion.reject(registry, args.version, args.reason.strip(), by=_local_user()))
        except InvalidModel as exc:
            err(f"readmit registry {args.action}: {exc}; refused, the champion is unchanged")
            return 2
        except UnknownVersionError:
            known = ", ".join(registry.list_versions()) or "none"
            where = registry.storage.uri
            err(f"readmit registry: no model version {args.version!r} in registry {where}; known: {known}")
            return 2
    return 0


def register(sub: Subcommands) -> None:
    """registry"""
    s = sub.add_parser("registry", help="list versions and states, history, approve, reject, promote")
    s.add_argument("action", choices=("list", "history", "approve", "reject", "shadow", "promote"))
    s.add_argument("version", nargs="?")
    s.add_argument("--reason", help="why (required for approve and reject; recorded with who and when)")
    s.add_argument("--registry")
    s.set_defaults(func=cmd_registry)
