"""The tunnel relay service (caBLE v2 rendezvous server) that operators run."""
