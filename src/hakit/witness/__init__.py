"""The split-brain witness: a small UDP server on a third machine that grants module leases.

`hakit witness run` starts it (`server.py`); its rules are in `hakit.core.witness`, its
datagrams in `hakit.wire.witness`, the nodes' client in `hakit.adapters.witness`.
See docs/witness.md.
"""
