"""Azure OpenAI: OpenAI's API at a resource of one's own, with Azure's URLs, key header and annotations.

- base_url is the resource's root, `https://{resource}.openai.azure.com`; a deployment's `model` is the
  Azure *deployment* name, which the classic API puts in the path:
  `/openai/deployments/{deployment}/chat/completions?api-version={api_version}`. With `api_version: v1`
  the v1 API is used instead: `/openai/v1/chat/completions`, no api-version, the deployment in `model`.
- The key goes in an `api-key` header, not `Authorization: Bearer` (a Microsoft Entra ID token can be
  sent as `Authorization` through the provider's `headers`, with no `api_key`).
- Bodies are OpenAI's (unknown parameters are refused with a 400, as OpenAI does), and so are errors,
  except that Azure writes some codes as the HTTP status ("429", "404"): those are named as OpenAI names
  them. A prompt its content filter stops is a 400 with code `content_filter`, passed back as it is.
- A stream starts with an event of Azure's own that has no choices, only the prompt's filter results
  (`prompt_filter_results`, with an empty id and model): it is left out, so the stream is OpenAI's
  shape (the first chunk names the completion). Filter results inside choices pass through untouched.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from backends.contract.errors import UpstreamError
from backends.openai_compat import OpenAICompatBackend

# The latest generally available version of the classic (dated) data-plane inference API.
DEFAULT_API_VERSION = "2024-10-21"
V1 = "v1"

# What a code that is only the HTTP status means in OpenAI's words.
_STATUS_CODES = {429: "rate_limit_exceeded", 500: "internal_error", 503: "service_unavailable"}


class AzureOpenAIBackend(OpenAICompatBackend):
    kind = "azure"
    filters_events = True

    def __init__(self, *args: Any, api_version: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_version = api_version or DEFAULT_API_VERSION
        root = self.base_url
        if self.api_version == V1:
            self._prefix, self._query = f"{root}/openai/v1", ""
        else:
            self._prefix = f"{root}/openai/deployments/{quote(self.model, safe='')}"
            self._query = f"?api-version={quote(self.api_version, safe='')}"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"api-key": api_key}

    def _url(self, path: str) -> str:
        return self._prefix + path + self._query

    async def probe(self) -> bool:
        """Azure has no health endpoint; with a `health_path`, that path at the resource's root."""
        if not self.health_path:
            return True
        return await self._get_ok(self.base_url + self.health_path)

    def skip_event(self, data: bytes) -> bool:
        """The prompt-annotation event: no choices, no usage, only `prompt_filter_results`."""
        return (b'"prompt_filter_results"' in data and b'"choices":[]' in data.replace(b" ", b"")
                and b'"usage":{' not in data)

    def normalise_error(self, status: int, raw: bytes, headers: Any) -> UpstreamError:
        err = super().normalise_error(status, raw, headers)
        if isinstance(err.code, str) and err.code.isdigit():
            err.code = _STATUS_CODES.get(status)  # type: ignore[assignment]
        return err
