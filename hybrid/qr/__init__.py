"""QR payload of the hybrid transport: CBOR map, FIDO:/ digit encoding, rendering."""

from hybrid.qr.digits import FIDO_URL_PREFIX, digits_decode, digits_encode
from hybrid.qr.errors import QrError
from hybrid.qr.payload import QrPayload

__all__ = ["FIDO_URL_PREFIX", "QrError", "QrPayload", "digits_decode", "digits_encode"]
