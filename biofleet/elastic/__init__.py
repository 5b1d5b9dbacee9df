"""Elastic servers: replicas that follow the load, scale to zero, and hold requests meanwhile.

* :mod:`.policy` — the profile's ``replicas: {min, max}`` and ``scaling:``, and the pure decision;
* :mod:`.state` — the plan ``up`` writes and the controller's journal;
* :mod:`.hold` — requests held while no replica is ready (keep-alives, 503 with the reason);
* :mod:`.controller` — the loop in the proxy: one scheduler query per poll, decide, submit/cancel.
"""
