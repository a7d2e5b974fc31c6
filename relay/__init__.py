"""The tunnel relay service (caBLE v2 rendezvous server) that operators run."""

from relay.compiled import activate

# The compiled per-connection modules when they are built and current (relay.native).
activate(__path__)
