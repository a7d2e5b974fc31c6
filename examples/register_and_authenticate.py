"""
Registers a passkey on a phone over the hybrid transport (the "scan this QR code" sign-in), then
authenticates with it, both verified by python-fido2's own Fido2Server.

This is python-fido2's examples/credential.py with HybridWebAuthnClient in place of Fido2Client:
the rest of the application does not change. The phone answers in another terminal:

    hybrid-relay --port 8080
    hybrid phone --relay ws://127.0.0.1:8080 --approve --data-dir /tmp/phone 'FIDO:/...'

(once per QR code), or in one command, with a relay and a phone started in the background:

    python examples/register_and_authenticate.py --with-local-phone --cred-props --prf
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from _local_phone import LocalPhone, parse_args
from fido2.client import ClientError
from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestationConveyancePreference,
    AuthenticatorAttachment,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    UserVerificationRequirement,
)

from hybrid.desktop import default_scanner
from hybrid.qr.render import render_terminal
from hybrid.webauthn_client import HybridWebAuthnClient

args = parse_args(
    "Register a passkey on a phone over hybrid, then sign in with it (python-fido2 server).",
    ("--cred-props", {"action": "store_true", "help": "ask for the credProps extension"}),
    ("--prf", {"action": "store_true", "help": "ask for the prf extension, then evaluate it"}),
)

try:
    with ExitStack() as stack:
        relay_url, ble_port, local = args.relay, args.ble_port, None
        if args.with_local_phone:
            local = stack.enter_context(LocalPhone(args.ble_port))
            relay_url, ble_port = local.relay_url, local.ble_port

        def show_qr(url: str) -> None:
            # The URL alone on its line (another tool can "scan" it), then the QR code for a camera.
            print(url, flush=True)
            print(render_terminal(url), flush=True)
            if local is not None:
                local.scan(url)

        # The client finds the phone on the loopback BLE medium and talks to it through the relay
        client = HybridWebAuthnClient(
            "https://example.com", default_scanner(ble_port), relay_url=relay_url, on_url=show_qr
        )
        server = Fido2Server(
            PublicKeyCredentialRpEntity(id="example.com", name="Example RP"),
            attestation=AttestationConveyancePreference.NONE,
        )
        user = PublicKeyCredentialUserEntity(id=b"user_id", name="A. User")

        # Extensions asked for on the command line
        extensions: dict = {}
        if args.cred_props:
            extensions["credProps"] = True
        if args.prf:
            extensions["prf"] = {}

        # Prepare parameters for makeCredential
        create_options, state = server.register_begin(
            user,
            user_verification=UserVerificationRequirement.DISCOURAGED,
            authenticator_attachment=AuthenticatorAttachment.CROSS_PLATFORM,
            extensions=extensions or None,
        )

        # Create a credential: shows the QR code, waits for the phone and for its user
        result = client.make_credential(create_options["publicKey"])

        # Complete registration
        auth_data = server.register_complete(state, result)
        assert auth_data.credential_data is not None  # always there in a registration
        credentials = [auth_data.credential_data]
        print("New credential created!")
        print("CREDENTIAL ID:", result.id)
        if args.cred_props:
            print("credProps:", result.client_extension_results["credProps"])
        if args.prf:
            print("prf enabled:", result.client_extension_results.prf.enabled)

        # Prepare parameters for getAssertion
        request_extensions = {"prf": {"eval": {"first": b"example salt"}}} if args.prf else None
        request_options, state = server.authenticate_begin(
            credentials,
            user_verification=UserVerificationRequirement.DISCOURAGED,
            extensions=request_extensions,
        )

        # Authenticate the credential: a second QR code
        selection = client.get_assertion(request_options["publicKey"])
        response = selection.get_response(0)

        # Complete authenticator
        server.authenticate_complete(state, credentials, response)
        print("Credential authenticated!")
        print("USER HANDLE:", response.response.user_handle)
        if args.prf:
            print("prf output:", response.client_extension_results.prf.results.first.hex())
except ClientError as error:
    # The client raises python-fido2's ClientError; its cause is the catalogue's PasskeyError,
    # whose text is written for people ("No compatible device found: ...").
    print(f"Failed: {error.cause or error}", file=sys.stderr)
    sys.exit(1)
