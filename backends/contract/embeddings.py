"""OpenAI's `CreateEmbeddingResponse`, built from vectors, and the vector arithmetic every embedder shares.

`base64` is what OpenAI's SDK asks for by default: the vector's little-endian float32 bytes, base64
encoded (the SDK decodes them with numpy's `frombuffer(..., dtype="float32")`).
"""

from __future__ import annotations

import base64
import math
from typing import Any, Sequence

import numpy as np

from backends.contract.errors import InvalidRequest


def encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def normalised(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def shortened(vectors: list[list[float]], dimensions: int | None, native: int, matryoshka: bool,
              model: str) -> list[list[float]]:
    """`dimensions`: truncated and re-normalised, for a Matryoshka model only (elsewhere the first
    components of a vector are not an embedding of their own)."""
    if dimensions is None or dimensions == native:
        return vectors
    if not matryoshka:
        raise InvalidRequest(f"The model '{model}' does not support 'dimensions' (its vectors have {native}).",
                             param="dimensions", code="unsupported_parameter")
    if dimensions > native:
        raise InvalidRequest(f"'dimensions' must be at most {native} for the model '{model}'.",
                             param="dimensions", code="invalid_value")
    return [normalised(v[:dimensions]) for v in vectors]


def embedding_response(model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int,
                       encoding_format: str = "float") -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
