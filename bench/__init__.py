"""Relay benchmark suite: ``python -m bench`` measures our relay against reference relays.

Modules: ``cli`` (orchestration and command line), ``loadgen`` (the load-generator process),
``wire`` (its WebSocket / raw-TCP client connections), ``transaction`` (a full hybrid session),
``procs`` (process control, /proc CPU and memory), ``relays`` (what to start), ``report``
(results.json, results.md, plots). Reference relays live in ``bench/reference/``.
"""
