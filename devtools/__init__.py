"""Development and test helpers that are not part of the installed package.

``servers`` starts SeaweedFS and the fleet service as local processes (tests, the demo);
``fleet_demo`` is ``make demo-fleet``.  Run from the source tree: ``python -m devtools.fleet_demo``.
"""
