"""The Files and Batch APIs: uploaded JSONL files, and batches whose lines run through the gateway's own
pipeline (auth, routes, failover, cache, usage, spend, budgets) on spare capacity.

`blobs` stores file contents (a local directory by default: a volume shared by the replicas), `stores`
keeps file and batch objects, each batch's finished lines and the coordinators' leases (Redis, or this
process with `disk` writing it through to local disk), `queue` is the work queue of the batches' lines
(Redis Streams, or this process), `jsonl` checks an input file line by line, `inputs` parses it once per
replica, `coordinator` starts and ends each batch, and `runner` takes lines from the queue and runs them.
"""
