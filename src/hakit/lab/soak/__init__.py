"""`hakit lab soak`: hours of load without a fault, counting what must not happen.

See docs/reliability.md.

Replication at full speed, farm traffic and every core busy at once, with the default
heartbeats: false failovers (goal 0), the daemons' memory and descriptors (goal: flat), the
event loop's lag and the heartbeat gaps, sampled from outside the nodes.
"""
