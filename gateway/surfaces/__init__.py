"""API surfaces other than chat completions, served by translating to and from chat.

A surface (the Responses API, Anthropic's Messages API) turns its request into a
`ChatCompletionRequest`, runs it through the one pipeline (auth, limits, budgets, cache,
routing, failover and continuation, usage and cost), and turns the chat answer back into
its own shape: a body, or a stream of its own typed events. Each surface keeps its protocol
types (`protocol`), its pure translation (`translate`) and its stream translation (`stream`)
apart, as the Anthropic backend does for the other direction.
"""
