"""Write bytecode for what a function imports, inside its build folder (run by `make build-ApiFunction`, batch-*).

Lambda's /var/task is read-only, so a package without __pycache__ compiles every module it imports on every cold
start (about 0.8 s of the API's 1.4-1.8 s here). Importing the app and its modules once with the runtime's Python
writes exactly that bytecode: about 10 MB, against 47 MB for compiling the whole package, which would pass the
250 MB limit. Run it with the Lambda runtime's Python version; another version's bytecode is simply ignored.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings


def main(folder: str) -> None:
    sys.dont_write_bytecode = False
    sys.path.insert(0, folder)
    warnings.simplefilter("ignore")
    try:
        import app  # noqa: F401  (the handler module and everything it imports at load)
    except ImportError as exc:  # e.g. botocore, which the runtime provides and some packages leave out
        print(f"note: app imports {exc.name}, provided only by the Lambda runtime; compiling the rest")
    import chalicelib

    # The modules routes import on first use, in every subpackage the package carries (deploy/lambda/package.py
    # copies only what the handler can import). walk_packages imports each subpackage to find its modules; one that
    # fails to import is skipped with its modules (onerror), as a module that fails is below.
    for module in pkgutil.walk_packages(chalicelib.__path__, prefix="chalicelib.", onerror=lambda name: None):
        try:
            importlib.import_module(module.name)
        except ImportError:  # training-only modules need pandas or scikit-learn, which the package leaves out
            continue


if __name__ == "__main__":
    main(sys.argv[1])
