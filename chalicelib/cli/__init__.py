"""`readmit`, the command line: each command parses, calls a capability and prints; plus the post-deploy smoke test and
the Docker-free `sam local invoke`. The top layer: nothing imports it."""

__all__ = ["local_invoke", "main", "sam_template", "smoke"]
