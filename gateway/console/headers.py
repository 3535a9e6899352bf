"""The headers every console response carries: what a browser may load and run for the page, and nothing else.

The policy allows the page's own scripts and stylesheet only (no inline script or style anywhere, no
`style=` attribute, no inline handler: the page has none), images from itself and the `blob:`/`data:` URLs its
scripts make (the cost chart is fetched with the key and shown from a blob), connections to itself (the admin
API), forms that post to itself, and no framing (clickjacking) and no `<base>` (script URLs cannot be moved).
"""

from __future__ import annotations

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_ALWAYS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def security_headers(*, page: bool) -> dict[str, str]:
    """`page`: the HTML, never stored (it is the same for everyone, but a cache has no business keeping an
    admin page); the assets are revalidated by their ETag on every load, so an upgrade is seen at once."""
    return {**_ALWAYS, "Cache-Control": "no-store" if page else "no-cache"}
