"""The tunnel: relay domains and URLs, Noise handshake, Crypter, message framing, client."""
