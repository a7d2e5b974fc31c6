"""The tunnel: relay domains and URLs, Noise handshake, Crypter, message framing, client.

* ``connection``: the transaction rules of both roles as sans-IO state machines
  (``DesktopConnection``, ``PhoneConnection``), from the first Noise message to the close;
* ``noise``, ``crypter``, ``messages``, ``linking``: the message-level pieces they use;
* ``client``: the trio WebSocket client that carries the bytes; ``domains``, ``urls``: where to.
"""
