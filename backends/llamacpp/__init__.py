"""llama.cpp: GGUF models on the CPU, each model instance in a supervised engine process of its own.

Layers, bottom up: `jobs` (types), `engine_thread`/`serial`/`batch` (the engines, which run only inside
an engine process), `wire` (every message between processes), `host` (the engine process), `supervisor`
(starts and restarts engine processes), `control` (reaching the supervisor from any HTTP worker),
`client` and `instances` (a worker's connections to its engines), `backend` (OpenAI requests in,
OpenAI bodies and frames out).
"""
