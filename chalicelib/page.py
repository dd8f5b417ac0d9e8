"""The clinician page: one HTML document with its CSS and JavaScript inlined at serve time.

One document means one public route (``GET /``) and no asset paths to resolve under an API Gateway stage
prefix. The Content-Security-Policy allows exactly the inlined script and style (by sha256), calls to this
origin only, and no external resources, so the page works offline and cannot be made to load anything else.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent / "web"  # index.html, app.css, app.js
ASSETS = ("index.html", "app.css", "app.js")
STYLE_SLOT, SCRIPT_SLOT = "/*APP_CSS*/", "/*APP_JS*/"


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@lru_cache(maxsize=1)
def clinician_page() -> tuple[str, dict[str, str]]:
    """(HTML, response headers). Built once per process: the assets ship with the code."""
    html, css, js = ((HERE / name).read_text() for name in ASSETS)
    document = html.replace(STYLE_SLOT, css).replace(SCRIPT_SLOT, js)
    csp = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(js)}",
            f"style-src {_sha256(css)}",
            "img-src 'self' blob:",  # plots arrive as blobs (fetched with the API key)
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return document, headers
