"""Anthropic's Messages API as an upstream: `translate` (OpenAI requests and answers to and from Messages),
`stream` (Messages events to OpenAI chunks, one frame at a time) and `backend` (the HTTP calls)."""
