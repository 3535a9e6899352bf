"""Take credentials out of text that came from an upstream, before a client, a log or a metric sees it.

An upstream's error message may quote what it received, the `Authorization`
header included (some OpenAI-compatible servers do, on a 401): passed through
verbatim, the client would get the gateway's own key for that upstream.
"""

from __future__ import annotations

import re
from typing import Iterable

_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_KEY_LIKE = re.compile(r"\b(sk|sk-ant|sk-proj|pk|rk)-[A-Za-z0-9_\-]{16,}")
_MASK = "***"


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secrets, bearer credentials, or anything shaped like an API key."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {_MASK}", text)
    return _KEY_LIKE.sub(_MASK, text)
