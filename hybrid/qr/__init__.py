"""QR payload of the hybrid transport: CBOR map, FIDO:/ digit encoding, rendering."""
