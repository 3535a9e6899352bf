"""Simulated upstream LLM servers (OpenAI, vLLM, Anthropic, Azure OpenAI) with fault injection.

Real HTTP servers on 127.0.0.1, each on its own event loop in a daemon thread,
so synchronous tests can point the gateway at them, inject faults and crash them.
"""

from tests.sim.anthropic_sim import AnthropicSim
from tests.sim.azure_sim import AzureSim
from tests.sim.base import RecordedRequest, SimServer
from tests.sim.faults import Fault
from tests.sim.openai_sim import OpenAISim
from tests.sim.text import canonical_reply, words
from tests.sim.vllm_sim import VLLMSim

__all__ = ["AnthropicSim", "AzureSim", "Fault", "OpenAISim", "RecordedRequest", "SimServer", "VLLMSim", "canonical_reply", "words"]
