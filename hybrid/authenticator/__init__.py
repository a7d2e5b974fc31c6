"""The phone's software authenticator: CTAP2 handling, the credential store, user approval.

``SoftwareAuthenticator(store, approver)`` answers CTAP2 requests arriving through the hybrid
tunnel; ``CredentialStore(data_dir)`` keeps its passkeys across runs; an ``Approver`` asks the user.
"""

from hybrid.authenticator.approval import (
    Approval,
    ApprovalRequest,
    Approver,
    auto_approver,
    declining_approver,
    terminal_approver,
)
from hybrid.authenticator.ctap import AAGUID, Command, SoftwareAuthenticator, Status
from hybrid.authenticator.store import CredentialStore, CredentialStoreError, StoredCredential

__all__ = [
    "AAGUID",
    "Approval",
    "ApprovalRequest",
    "Approver",
    "Command",
    "CredentialStore",
    "CredentialStoreError",
    "SoftwareAuthenticator",
    "Status",
    "StoredCredential",
    "auto_approver",
    "declining_approver",
    "terminal_approver",
]
