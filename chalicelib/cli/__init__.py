"""`readmit`, the command line: each command parses, calls a capability and prints; plus the post-deploy smoke test and
the Docker-free `sam local invoke`. ``main`` is the entry point and the parser's frame; each command group is a module
that registers its own subcommands (``data``, ``model``, ``monitor``, ``similar``, ``serve``, ``registry``, ``ops``),
sharing ``common``. The top layer: nothing imports it."""

__all__ = [
    "common",
    "data",
    "local_invoke",
    "main",
    "model",
    "monitor",
    "ops",
    "registry",
    "sam_template",
    "serve",
    "similar",
    "smoke",
]
