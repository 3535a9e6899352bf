"""Every environment variable the gateway, its commands, its install scripts and its shipped configs read: one
row each, for the table in deploy/SETTINGS.md (gateway/settings_reference.py writes it).

tests/test_settings_reference.py scans the source (gateway/, backends/, routing/, deploy/*.sh) and the shipped
configs for the names they read, and fails on a name without a row here, or a row nothing reads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    sets: str  # what it sets, and what wins over it
    default: str  # what holds while it is unset
    read_by: str  # the command or script that reads it


_SERVE = "`serve` (and its workers)"
_CACHE = "${XDG_CACHE_HOME:-~/.cache}"

ENV_VARS: tuple[EnvVar, ...] = (
    # The gateway's own, LLM_GATEWAY_* (gateway/settings.py lists most of them)
    EnvVar("LLM_GATEWAY_CONFIG", "the YAML config file, as `--config` (the flag wins)",
           "none: the built-in defaults", f"{_SERVE}, `cost --usage-file`"),
    EnvVar("LLM_GATEWAY_HOST", "`server.host`; `--host` wins", "`server.host` (127.0.0.1)", "`serve`"),
    EnvVar("LLM_GATEWAY_PORT", "`server.port`; `--port` wins", "`server.port` (8000)", "`serve`"),
    EnvVar("LLM_GATEWAY_LOG_LEVEL", "`server.log_level`: debug, info, warning or error; `--log-level` wins",
           "`server.log_level` (info)", _SERVE),
    EnvVar("LLM_GATEWAY_LOG_FORMAT", "`logging.format`: `text` or `json` (anything else: exit 2)",
           "`logging.format` (text)", _SERVE),
    EnvVar("LLM_GATEWAY_MODEL_CARDS_DIR", "the model cards' folder, over `server.model_cards_dir`",
           "the cards shipped with the package", "`serve`, `models`, `check`, `cost`"),
    EnvVar("LLM_GATEWAY_MASTER_KEY", "turns API keys on; also an admin key", "unset: keys off, every caller "
           "anonymous (and only loopback addresses served)", f"{_SERVE}; `keys`, `usage`"),
    EnvVar("LLM_GATEWAY_ADMIN_KEY", "the admin API's key, when it is not the master key",
           "unset: only the master key opens the admin API", f"{_SERVE}; `keys`, `usage`"),
    EnvVar("LLM_GATEWAY_ALLOW_UNAUTHENTICATED", "`1`, `true` or `yes`: as `--allow-unauthenticated` "
           "(`server.allow_unauthenticated`)", "off", _SERVE),
    EnvVar("LLM_GATEWAY_REDIS_URL", "the Redis URL, as `--redis-url` (set by `serve` for its workers)", "unset",
           _SERVE),
    EnvVar("REDIS_URL", "the durable Redis: below `--redis-url`, above `redis.url`",
           "unset: `redis.url`, else in-process stores", _SERVE),
    EnvVar("LLM_GATEWAY_URL", "the gateway the admin and cost commands call, as `--url`",
           "http://127.0.0.1:8000", "`keys`, `usage`, `cost`"),
    EnvVar("LLM_GATEWAY_MODELS_DIR", "where GGUF weights are cached", f"`{_CACHE}/llm-gateway/models`",
           "`serve`, `check`"),
    EnvVar("LLM_GATEWAY_DATA_DIR", "the data folder: uploaded files go to its `files/` (`batches.files_dir` wins)",
           "`${XDG_DATA_HOME:-~/.local/share}/llm-gateway`", "`serve`"),
    EnvVar("LLM_GATEWAY_ENGINE_CONTROL", "internal: the engine supervisor's control socket, set by "
           "`serve --workers N` for its workers", "unset: the process runs its own engines", _SERVE),
    EnvVar("PROMETHEUS_MULTIPROC_DIR", "prometheus-client's folder for metrics merged across workers",
           "with `--workers N`, a temporary folder `serve` makes", _SERVE),
    EnvVar("OTEL_EXPORTER_OTLP_ENDPOINT", "turns tracing on: spans go to this OTLP/HTTP endpoint (the "
           "OpenTelemetry SDK reads its other `OTEL_EXPORTER_OTLP_*` variables itself)", "unset: no tracing",
           _SERVE),
    EnvVar("OTEL_SERVICE_NAME", "the spans' `service.name`", "llm-gateway", _SERVE),
    EnvVar("XDG_CACHE_HOME", "the base of the weights cache, the gRPC stubs' cache and the llama.cpp wheels",
           "`~/.cache`", "`serve`, `check`, gRPC codegen, `deploy/install-llama-cpp.sh`"),
    EnvVar("PYTHONPATH", "Python's own; the local engine processes get it with the project's folder in front",
           "unset", "`serve` (for its engine processes)"),
    EnvVar("XDG_DATA_HOME", "the base of the data folder (uploaded files)", "`~/.local/share`", "`serve`"),
    # Building llama.cpp (deploy/install-llama-cpp.sh)
    EnvVar("LLAMA_CPP_BUILD", "`portable`: the AVX2/FMA/F16C baseline, for any x86-64-v3 CPU",
           "`host`: this CPU's features, never AMX", "`deploy/install-llama-cpp.sh`"),
    EnvVar("LLAMA_CPP_CMAKE_ARGS", "your own CMake flags, used exactly as given", "flags read from the CPU",
           "`deploy/install-llama-cpp.sh`"),
    EnvVar("LLAMA_CPP_CPUINFO", "a file to read the CPU flags from (for the tests)", "`/proc/cpuinfo`",
           "`deploy/install-llama-cpp.sh`"),
    EnvVar("LLM_GATEWAY_WHEELS", "where built llama-cpp-python wheels are kept", f"`{_CACHE}/llm-gateway/wheels`",
           "`deploy/install-llama-cpp.sh`"),
    EnvVar("CMAKE_BUILD_PARALLEL_LEVEL", "compile jobs", "the number of cores", "`deploy/install-llama-cpp.sh`"),
    # Named by the shipped configs (`${...}` references) and deploy/compose.yaml
    EnvVar("REDIS_CACHE_URL", "the response cache's own Redis: the shipped configs' "
           "`redis.cache_url: ${REDIS_CACHE_URL:-}`", "empty: the cache shares the durable Redis",
           "`serve`, through `deploy/configs/*.yaml`"),
    EnvVar("VLLM_API_KEY", "the vLLM provider's `api_key` in gpu-first.yaml (and vLLM's own `--api-key`)",
           "unset: no key sent", "`serve`, through `deploy/configs/gpu-first.yaml`"),
    EnvVar("OPENAI_API_KEY", "the OpenAI provider's `api_key` in gpu-first.yaml and remote-only.yaml",
           "unset: no key sent (OpenAI refuses)", "`serve`, through `deploy/configs/gpu-first.yaml`, `remote-only.yaml`"),
    EnvVar("OPENAI_BASE_URL", "the OpenAI provider's `base_url` in remote-only.yaml (a proxy, a compatible service)",
           "https://api.openai.com/v1", "`serve`, through `deploy/configs/remote-only.yaml`"),
    EnvVar("ANTHROPIC_API_KEY", "the Anthropic provider's `api_key` in remote-only.yaml",
           "unset: no key sent (Anthropic refuses)", "`serve`, through `deploy/configs/remote-only.yaml`"),
    EnvVar("ANTHROPIC_BASE_URL", "the Anthropic provider's `base_url` in remote-only.yaml", "https://api.anthropic.com",
           "`serve`, through `deploy/configs/remote-only.yaml`"),
    EnvVar("GATEWAY_CONFIG", "which file of `deploy/configs` the compose gateway serves", "cpu-only.yaml",
           "docker compose (`deploy/compose.yaml`)"),
    EnvVar("HF_TOKEN", "the vLLM container's Hugging Face token", "empty", "docker compose (`deploy/compose.yaml`)"),
    # Test hooks: never set them in production
    EnvVar("LLM_GATEWAY_ENGINE_FAULT", "test hook: a local engine crashes while loading, on purpose", "unset",
           "engine processes"),
    EnvVar("LLM_GATEWAY_ENGINE_HOLD", "test hook: a file whose appearance lets an engine's load begin", "unset",
           "engine processes"),
    EnvVar("LLM_GATEWAY_EMBED_STALL", "test hook: a file whose presence holds the embedding engine before a decode",
           "unset", "engine processes"),
)
