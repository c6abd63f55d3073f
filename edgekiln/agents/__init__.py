"""edgekiln.agents: the on-device agent (``edgekiln agent``).

``config`` (agent.toml), ``daemon`` (the supervised loop), the Edge Manager local API over
gRPC (``registry`` of loaded models, ``servicer``, ``server``, ``client``, ``bench_relay``),
``capture``, ``outbox``, ``messages`` and ``salvage`` (store and forward), ``reporter``
(metrics, heartbeats, HTTP to the fleet). Importing this package loads none of them, nor
grpc or numpy: each module imports what it needs when it is used.
"""
