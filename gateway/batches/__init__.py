"""The Files and Batch APIs: uploaded JSONL files, and batches whose lines run through the gateway's own
pipeline (auth, routes, failover, cache, usage, spend, budgets) on spare capacity.

`blobs` stores file contents (a local directory by default: a volume shared by the replicas), `stores`
keeps file and batch objects, each batch's finished lines and each replica's lease on a batch (Redis, or
this process), `jsonl` checks an input file line by line, and `runner` takes batches and runs their lines.
"""
