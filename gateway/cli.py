"""`llm-gateway`: serve, list model cards, check a config.

Settings come from, in order of precedence: command-line flags, environment
variables (LLM_GATEWAY_*), the YAML config, built-in defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from backends.llamacpp.control import ControlThread
from backends.model_cards import ModelCardError, load_cards
from gateway import __version__
from gateway.settings import (
    ENV_ALLOW_UNAUTHENTICATED,
    ENV_CONFIG,
    ENV_ENGINE_CONTROL,
    ENV_HOST,
    ENV_LOG_LEVEL,
    ENV_METRICS_DIR,
    ENV_PORT,
    ENV_REDIS_URL,
    Settings,
    cards_dir,
    load_config_and_cards,
    log_format,
)
from gateway.workers import port_taken, reuse_port_available, run_workers


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from backends.llamacpp.installed import engine_problem
    from backends.weights import WeightsError, models_dir, progress_bar, resolve_weights
    from gateway.logsetup import configure, uvicorn_options

    config_path = args.config or os.environ.get(ENV_CONFIG)
    config, cards = load_config_and_cards(config_path)
    server = config.server
    host = args.host or os.environ.get(ENV_HOST) or server.host
    port = args.port if args.port is not None else int(os.environ.get(ENV_PORT) or server.port)
    log_level = args.log_level or os.environ.get(ENV_LOG_LEVEL) or server.log_level
    try:
        fmt = log_format(config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure(log_level, config.logging.json_requests, fmt)

    # A local model on an install without llama.cpp (the `local` extra) stops here, in one line.
    where = f"in {config_path}" if config_path else "the built-in default config"
    for model in config.models:
        problem = engine_problem(model.card, where)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    # Build any missing GGUF now, in the foreground, where a progress bar makes sense.
    for model in config.models:
        card = cards[model.card]
        try:
            resolve_weights(card, model.model_path, progress_bar(f"assembling {card.id}"))
        except WeightsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # the cache cannot be written: a read-only filesystem, a full disk, permissions
            print(f"error: {card.id}: cannot build its GGUF in {models_dir()} ({exc.strerror or exc}): point "
                  f"LLM_GATEWAY_MODELS_DIR at a writable folder, or build it there beforehand", file=sys.stderr)
            return 2

    from gateway.exposure import is_loopback

    if args.allow_unauthenticated:
        os.environ[ENV_ALLOW_UNAUTHENTICATED] = "1"  # the workers and the app read it too
    settings = Settings.from_env()
    if not is_loopback(host) and not settings.auth_enabled and not (settings.allow_unauthenticated
                                                                   or server.allow_unauthenticated):
        print(f"error: refusing to serve {host} without API keys: anyone who can reach it could use every model "
              "and the admin API would be off. Set LLM_GATEWAY_MASTER_KEY, or pass --allow-unauthenticated "
              "(server.allow_unauthenticated) if a network policy guards the address.", file=sys.stderr)
        return 2
    grpc_problem, grpc_status = _grpc_problem(server.grpc.enabled, server.grpc.host, server.grpc.port, args.workers)
    if grpc_problem:
        print(f"error: {grpc_problem}", file=sys.stderr)
        return grpc_status
    shown = f"[{host}]" if ":" in host else host
    print(f"llm-gateway {__version__} listening on http://{shown}:{port}  (OpenAI base_url: http://{shown}:{port}/v1)")
    names = [r.name for r in config.routes]
    names += [m.card for m in config.models if m.card not in names]
    first = names[0] if names else "MODEL"
    print("models: " + ", ".join(names) + "  (loading; GET /ready turns 200 when warm)")
    print("try:\n  curl http://%s:%d/v1/chat/completions -H 'Content-Type: application/json' \\\n"
          "    -d '{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'"
          % (shown, port, first))
    sys.stdout.flush()
    from gateway.connection_guard import GuardedHTTP

    # The HTTP protocol with header deadlines and a connection cap (its limits are set by the app factory).
    common = dict(host=host, port=port, log_level=log_level, access_log=args.access_log,
                  timeout_graceful_shutdown=server.drain_timeout_s, http=GuardedHTTP, timeout_keep_alive=server.idle_timeout_s,
                  **uvicorn_options(fmt))
    if args.workers > 1:
        _prepare_workers(config_path, args.redis_url)
        # This process supervises the local models' engines; every worker connects to the same ones.
        engines = ControlThread()
        os.environ[ENV_ENGINE_CONTROL] = engines.start()
        try:
            if reuse_port_available(port):  # a socket per worker: the kernel balances connections
                return run_workers(args.workers, host, port,
                                   {k: v for k, v in common.items() if k not in ("host", "port")})
            uvicorn.run("gateway.asgi:create", factory=True, workers=args.workers, **common)
            return 0
        finally:
            engines.stop()
    from gateway.app import create_app

    app = create_app(config, cards, config_path=config_path, redis_url=args.redis_url)
    uvicorn.run(app, **common)
    return 0


def _grpc_problem(enabled: bool, host: str, port: int, workers: int) -> tuple[str | None, int]:
    """Why the gRPC API cannot start as configured, and the exit status; (None, 0) when it can.
    Several workers share its port through SO_REUSEPORT, as they share the HTTP one (gateway/workers.py)."""
    if not enabled:
        return None, 0
    if workers > 1 and not reuse_port_available(port):
        return (f"server.grpc with --workers {workers} needs a fixed port (not 0) and SO_REUSEPORT (Linux): "
                "every worker serves gRPC on that one port"), 2
    taken = port_taken(host, port) if port else None
    if taken:
        return f"server.grpc: cannot listen on {host}:{port}: {taken}", 1
    return None, 0


def _prepare_workers(config_path: str | None, redis_url: str | None) -> None:
    """Each worker is a fresh process: hand it the config, and a shared directory for metrics."""
    import tempfile

    if config_path:
        os.environ[ENV_CONFIG] = str(Path(config_path).resolve())
    if redis_url:
        os.environ[ENV_REDIS_URL] = redis_url
    metrics_dir = os.environ.get(ENV_METRICS_DIR)
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="llm-gateway-metrics-")
        os.environ[ENV_METRICS_DIR] = metrics_dir
    for stale in Path(metrics_dir).glob("*.db"):  # counters from an earlier run must not leak in
        stale.unlink()


def cmd_models(args: argparse.Namespace) -> int:
    try:
        cards = load_cards(cards_dir())
    except ModelCardError as exc:
        print(f"model card error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps([c.model_dump(exclude_none=True) for c in cards.values()],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    rows = [("ID", "BACKEND", "FORMAT", "QUANT", "PARAMS", "CONTEXT", "PRICE IN/OUT $/1M")]
    for c in cards.values():
        price = f"{c.pricing.input_per_mtok:g}/{c.pricing.output_per_mtok:g}" if c.pricing else "-"
        rows.append((c.id, c.backend, c.format, c.quantization or "-", c.parameters, str(c.context_length), price))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"llm-gateway {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the gateway (default: gemma-3-270m on the CPU, 127.0.0.1:8000)")
    serve.add_argument("--config", help=f"YAML config file (env {ENV_CONFIG})")
    serve.add_argument("--host", help=f"bind address (env {ENV_HOST}; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (env {ENV_PORT}; default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help=f"env {ENV_LOG_LEVEL}")
    serve.add_argument("--access-log", action="store_true", help="uvicorn's access log too (the gateway "
                                                                 "already logs one JSON line per request)")
    serve.add_argument("--workers", type=int, default=1, help="HTTP worker processes (they share the local "
                                                              "models' engine processes; metrics are merged)")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve a non-loopback address without LLM_GATEWAY_MASTER_KEY (refused otherwise)")
    serve.add_argument("--redis-url", help="Redis for the shared cache, keys and limits (env REDIS_URL; "
                                           "default: in-process)")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list the model cards")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=cmd_models)

    from gateway.cli_admin import add_parsers

    add_parsers(sub)
    from gateway.cli_cost import add_parsers as add_cost_parsers

    add_cost_parsers(sub)

    from gateway.cli_check import add_parser as add_check_parser

    add_check_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
