"""Stack files from profiler traces: ``gpusim stack import`` and ``gpusim stack check``.

How a user brings any engine to gpusim: profile a few forward steps of it
(``torch.profiler`` with ``record_shapes=True``, ``export_chrome_trace``), import, and
predict with the stack file it writes. ``units`` groups kernels by the op that launched
them, ``layers`` finds the repeating layer, ``ops`` turns units into stack ops, ``build``
assembles the stack and compares one with a trace.
"""
