"""The OpenAI contract: the bottom layer, which every other package builds on and which imports none of them.

`protocol` holds the request models (what a client may send), `errors` the error tree (every error a
client can see, with its HTTP status and OpenAI `type`/`code`), and `responses` the one place that builds
response bodies and stream chunks. Backends translate to and from it; routing and the HTTP gateway pass
it along. Nothing here imports `backends`, `routing` or `gateway`: tests/test_layers.py checks.
"""
