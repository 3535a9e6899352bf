"""llama.cpp's log in ours: its info chatter dropped, the warnings that say nothing wrong for what we serve
(the exact lines the shipped models print at start-up) at INFO, every other warning and error as it was."""

from __future__ import annotations

import logging

import pytest

from backends.llamacpp.sysinfo import log_level_for

WARN, ERROR, INFO, DEBUG = 3, 4, 2, 1  # GGML_LOG_LEVEL_* (ggml.h)


@pytest.mark.parametrize("line", [
    "llama_context: n_ctx_seq (8192) > n_ctx_train (0) -- possible training context overflow\n",
    "llama_context: n_ctx_seq (2048) > n_ctx_train (512) -- possible training context overflow\n",
    "load: control-looking token:    212 '</s>' was not control-type; this is probably a bug in the model. its type "
    "will be overridden\n",
    "llama_kv_cache_iswa: using full-size SWA cache (ref: https://github.com/ggml-org/llama.cpp/pull/13194)\n",
])
def test_the_shipped_models_start_up_warnings_are_info(line: str) -> None:
    assert log_level_for(WARN, line) == logging.INFO


@pytest.mark.parametrize("level, line, expected", [
    (WARN, "llama_model_load: error loading model: tensor 'blk.0' data is not within the file bounds",
     logging.WARNING),
    (WARN, "ggml_backend_cpu: AMX kernels are unavailable", logging.WARNING),
    (ERROR, "llama_context: n_ctx_seq (8192) > n_ctx_train (0)", logging.ERROR),  # an error is never softened
    (ERROR, "llama_init_from_model: failed to initialize the context", logging.ERROR),
    (INFO, "llama_model_loader: loaded meta data with 39 key-value pairs", None),
    (DEBUG, "anything", None),
    (WARN, "   \n", None),
])
def test_other_lines_keep_their_level_or_are_dropped(level: int, line: str, expected: int | None) -> None:
    assert log_level_for(level, line) == expected
