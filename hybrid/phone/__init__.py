"""The phone (authenticator) role: its hybrid session and the software authenticator behind it.

* ``hybrid.phone.session``: ``PhoneSession`` scans a ``FIDO:/`` payload, advertises the EID, opens
  the tunnel and serves one CTAP2 request (``PhoneDeadlines``, ``PhoneResult``).
* ``hybrid.phone.authenticator``: ``SoftwareAuthenticator(store, approver)`` answers CTAP2 requests.
* ``hybrid.phone.store``: ``CredentialStore(data_dir)`` keeps the passkeys across runs.
* ``hybrid.phone.approval``: an ``Approver`` asks the user.
"""

from hybrid.phone.approval import (
    Approval,
    ApprovalRequest,
    Approver,
    auto_approver,
    declining_approver,
    terminal_approver,
)
from hybrid.phone.authenticator import AAGUID, Command, SoftwareAuthenticator, Status
from hybrid.phone.session import PhoneDeadlines, PhoneResult, PhoneSession
from hybrid.phone.store import CredentialStore, CredentialStoreError, StoredCredential

__all__ = [
    "AAGUID",
    "Approval",
    "ApprovalRequest",
    "Approver",
    "Command",
    "CredentialStore",
    "CredentialStoreError",
    "PhoneDeadlines",
    "PhoneResult",
    "PhoneSession",
    "SoftwareAuthenticator",
    "Status",
    "StoredCredential",
    "auto_approver",
    "declining_approver",
    "terminal_approver",
]
