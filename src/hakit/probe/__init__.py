"""Health probes: a plain-HTTP endpoint per module for cloud load balancers and monitors.

`GET PATH` on `health_probe.port` answers 200 while this node serves the module (a mirror's
PRIM or ALONE, a farm's UP, each ready) and 503 otherwise, with a short JSON body. The endpoint
is unauthenticated by design (a load balancer cannot sign requests) and therefore reveals
nothing but the module's name, the node's name, its state and status; it reads only bounded
requests (connections, header size, time, rate) and never blocks or stops the daemon
(docs/security.md, "Health probe"; docs/cloud.md). It is fed by the daemon's status document
(`daemon/status.py`, the same one the API serves) and reaches into nothing else.

- `http.py`: one module's listener (h11 for the HTTP, asyncio for the sockets) and its limits
- `manager.py`: the listeners that the modules' configurations ask for, kept in step with them
"""
