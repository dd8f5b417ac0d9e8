"""`readmit serve` (the API over HTTP) and `readmit token` (a dev access token for it)."""

from __future__ import annotations

import argparse
import contextlib

from chalicelib.cli.common import Subcommands, err, project_dir
from chalicelib.core import settings


def _set_auth(mode: str) -> None:
    """$READMIT_AUTH for the server and its workers; dev mode makes its secret now and says how to get a token."""
    import os

    from chalicelib.serving import auth

    os.environ[auth.ENV_AUTH] = mode
    if mode == "dev":
        auth.dev_secret(create=True)
        err("authentication: dev tokens (`readmit token --scope predict` prints one; send Authorization: Bearer …)")
    auth.from_env()  # an incomplete setting (jwks without an issuer, say) stops here with its reason


def cmd_token(args: argparse.Namespace) -> int:
    """A dev-mode access token for `readmit serve --auth dev` (shaped like a Cognito access token)."""
    from chalicelib.serving import auth

    scopes = tuple(dict.fromkeys(args.scope or auth.SCOPES))
    token = auth.DevAuth(auth.dev_secret()).issue(args.subject, scopes, ttl_seconds=args.ttl)
    print(token)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from chalice.cli.factory import CLIFactory

    factory = CLIFactory(project_dir=str(project_dir()), environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=args.stage)
    # As `chalice local` does: app.py importable from any cwd, and .chalice/config.json's variables for the stage
    # in os.environ (the workers inherit them); explicit flags below win over them.
    factory.load_chalice_app(config.environment_variables)
    if args.model:
        from chalicelib.registry.loader import bundle_path
        from chalicelib.registry.model_check import require_valid

        require_valid(bundle_path(args.model))  # a wrong path or broken model stops here, not as `ready: false`
        os.environ[settings.ENV_MODEL] = args.model
    if args.registry:
        os.environ[settings.ENV_REGISTRY] = args.registry
    if args.check_interval is not None:
        os.environ[settings.ENV_CHECK_INTERVAL] = str(args.check_interval)
    if args.auth is not None:
        _set_auth(args.auth)
    if args.dev:
        from app import local_server  # app.py, which load_chalice_app imported from the project folder

        server = local_server(config, args.host, args.port)  # like template.yaml's catch-all: unknown paths get 404
        err(f"readmit API (Chalice dev server) on http://{args.host}:{args.port} (stage {args.stage}); Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0
    from chalicelib.serving.wsgi import ServerConfig, serve

    workers = {"workers": args.workers} if args.workers is not None else {}
    server_config = ServerConfig(host=args.host, port=args.port, **workers)
    err(
        f"readmit API on http://{args.host}:{args.port} (stage {args.stage}, gunicorn, {server_config.workers} workers"
        " each loading the champion); Ctrl-C stops it"
    )
    serve(server_config, args.stage)
    return 0


def register(sub: Subcommands) -> None:
    """serve, token"""
    s = sub.add_parser("serve", help="serve the API over HTTP (gunicorn; --dev: Chalice's local server)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model", help="bundle folder or URI to serve instead of the registry's champion")
    s.add_argument("--registry", help="registry URI (default: $READMIT_REGISTRY or the local registry)")
    s.add_argument("--check-interval", type=float, help="seconds between champion checks (default 300)")
    s.add_argument("--stage", default="local")
    s.add_argument("--workers", type=int, help="processes, each with its own model (default $WEB_CONCURRENCY or 2)")
    s.add_argument("--dev", action="store_true", help="Chalice's single-process development server instead")
    s.add_argument(
        "--auth",
        choices=("none", "dev", "jwks"),
        help="none (default locally); dev: local tokens from `readmit token`; jwks: Cognito access tokens "
        "($READMIT_AUTH_ISSUER, $READMIT_AUTH_CLIENT_IDS)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("token", help="print a dev access token for `readmit serve --auth dev`")
    s.add_argument("--scope", action="append", choices=("predict", "admin"), help="repeatable (default: both)")
    s.add_argument("--subject", default="dev-user", help="the token's sub claim (audit records keep only its hash)")
    s.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    s.set_defaults(func=cmd_token)
