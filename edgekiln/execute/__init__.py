"""Run an artifact somewhere and compare what it computes.

The layer below compile, bench and the agent's Bench relay:

- :mod:`~edgekiln.execute.host`: what this machine is (architecture, CPU features, GPU),
  whether it can execute a profile, the cache root, a machine description for reports;
- :mod:`~edgekiln.execute.progress`: the progress protocol (``step``, ``advance``) and the
  console reporter that compile, bench and the emulator builder share;
- :mod:`~edgekiln.execute.worker`: the worker process and its JSON-lines protocol (load an
  artifact or a baseline runtime, run it, return outputs and timings);
- :mod:`~edgekiln.execute.runners`: where a worker runs (this host, an emulated board, a
  device's agent) and the agent side's relay;
- :mod:`~edgekiln.execute.inputs`: seeded inputs and the comparison of outputs;
- :mod:`~edgekiln.execute.timing`: interleaved pair timing of several workers;
- :mod:`~edgekiln.execute.statistics`: percentiles and the confidence intervals of pair ratios.

It imports runtime/, emulation/, artifact/, device_profiles/ and errors only; the heavy
runtimes are imported inside the worker process, when a subject loads.
"""
