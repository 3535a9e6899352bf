"""The whole gateway on the real model, driven by the official SDKs and checked against OpenAI's schemas."""
