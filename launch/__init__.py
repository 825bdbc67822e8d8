"""Composition: the programs that put the node, the producer and Redis together.

``node`` (the ``python -m server`` command line, with the embedded default), ``embedded`` (node +
in-memory broker + producer in one process), ``workers`` (``--workers N``), ``cluster`` (the compose
topology as local processes), ``processes`` (start and stop them by PID) and ``bench`` (the load
tester's scenarios on a local cluster). Nothing below this package imports it.
"""
