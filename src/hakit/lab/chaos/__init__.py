"""`hakit lab chaos`: randomized, seeded fault campaigns against a lab cluster, with a workload
whose acknowledgements are recorded outside the nodes and invariants checked from outside.

- `schedule`: the pure, seeded schedule (which fault, on which node, for how long, per round);
- `invariants`: pure checkers over recorded samples (ledger, single primary, farm, logs);
- `report`: the report (table, JSON, SVG timeline) from what a campaign recorded;
- `faults`, `scenario`, `campaign`: the effects (faults on a `Lab`, the modules, the rounds);
- `app`, `writer`, `farmclient`: the programs run inside the lab (the module's appender, the
  client's writer and farm client), each writing its ledger outside the nodes.

See docs/reliability.md.
"""
