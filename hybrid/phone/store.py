"""The phone's persistent passkey store: ES256 credentials in one SQLite file.

Each credential keeps its relying party, its user entity, its P-256 private key (PKCS#8 DER, as a
platform keystore would export it), its signature counter, whether it is *discoverable* (created
with ``rk: true``: found by an empty allow list) and its PRF secret (32 random bytes, the
per-credential key of the ``prf`` extension). Non-discoverable credentials are stored too, but are
only found by their credential id. A sequence number records creation order, so "the most recent
credential for this site" never depends on a clock. As CTAP requires for discoverable credentials,
creating one for an (rp id, user handle) pair that already has one replaces the old one.

Databases written before the ``discoverable`` and ``prf_secret`` columns existed are upgraded in
place: their credentials were all discoverable, and a missing PRF secret is made on first use.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hybrid.errors import EnvironmentalError

STORE_FILENAME = "credentials.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    credential_id BLOB NOT NULL UNIQUE,
    rp_id TEXT NOT NULL,
    rp_name TEXT,
    user_id BLOB NOT NULL,
    user_name TEXT,
    user_display_name TEXT,
    private_key BLOB NOT NULL,
    sign_count INTEGER NOT NULL DEFAULT 0,
    discoverable INTEGER NOT NULL DEFAULT 1,
    prf_secret BLOB
);
CREATE INDEX IF NOT EXISTS credentials_by_rp ON credentials (rp_id);
"""

# Columns added after the first release, with the definition ALTER TABLE gives old databases.
_ADDED_COLUMNS = {
    "discoverable": "INTEGER NOT NULL DEFAULT 1",
    "prf_secret": "BLOB",
}
PRF_SECRET_LEN = 32

_COLUMNS = (
    "credential_id, rp_id, rp_name, user_id, user_name, user_display_name, private_key, "
    "sign_count, seq, discoverable, prf_secret"
)


class CredentialStoreError(EnvironmentalError):
    """The credential database cannot be opened or is not ours."""


@dataclass(frozen=True)
class StoredCredential:
    """One credential as stored on the phone (``discoverable`` False for ``rk: false``).

    ``seq`` orders credentials by creation; ``prf_secret`` is the per-credential PRF key, ``None``
    for a credential made without ``prf``. Built by the store, not by callers.
    """

    credential_id: bytes
    rp_id: str
    rp_name: str | None
    user_id: bytes
    user_name: str | None
    user_display_name: str | None
    private_key_der: bytes
    sign_count: int
    seq: int
    discoverable: bool = True
    prf_secret: bytes | None = None

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_der_private_key(self.private_key_der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CredentialStoreError("stored private key is not an EC key")
        return key


class CredentialStore:
    """SQLite-backed credential store in ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: Path) -> None:
        """Open (or create, readable by its owner only) the store in ``data_dir``;
        ``CredentialStoreError`` if it cannot be opened or is not ours."""
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / STORE_FILENAME
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            # Autocommit mode with explicit BEGIN IMMEDIATE transactions (see _Transaction); the
            # connection may be used from the trio thread or a worker thread, never both at once.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if fresh:
                # Private keys live here: keep the file readable by its owner only.
                os.chmod(self.path, 0o600)
            self._db.executescript(_SCHEMA)
            self._upgrade()
        except (OSError, sqlite3.Error) as exc:
            raise CredentialStoreError(f"cannot open credential store {self.path}: {exc}") from exc

    def _upgrade(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(credentials)")}
        for name, definition in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE credentials ADD COLUMN {name} {definition}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(
        self,
        *,
        credential_id: bytes,
        rp_id: str,
        rp_name: str | None,
        user_id: bytes,
        user_name: str | None,
        user_display_name: str | None,
        private_key: ec.EllipticCurvePrivateKey,
        discoverable: bool = True,
        prf_secret: bytes | None = None,
    ) -> StoredCredential:
        """Store a new credential; a discoverable one replaces any discoverable credential for
        the same rp id and user handle (CTAP: one resident key per account and site)."""
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if prf_secret is None:
            prf_secret = os.urandom(PRF_SECRET_LEN)
        with self._transaction():
            if discoverable:
                self._db.execute(
                    "DELETE FROM credentials WHERE rp_id = ? AND user_id = ? AND discoverable = 1",
                    (rp_id, user_id),
                )
            self._db.execute(
                "INSERT INTO credentials (credential_id, rp_id, rp_name, user_id, user_name, "
                "user_display_name, private_key, sign_count, discoverable, prf_secret) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (
                    credential_id,
                    rp_id,
                    rp_name,
                    user_id,
                    user_name,
                    user_display_name,
                    der,
                    int(discoverable),
                    prf_secret,
                ),
            )
        stored = self.get(credential_id)
        assert stored is not None
        return stored

    def get(self, credential_id: bytes) -> StoredCredential | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM credentials WHERE credential_id = ?", (credential_id,)
        ).fetchone()
        return _row(row) if row else None

    def for_rp(self, rp_id: str, *, discoverable_only: bool = False) -> list[StoredCredential]:
        """Every credential for ``rp_id`` (only the discoverable ones if asked), newest first."""
        where = "rp_id = ?" + (" AND discoverable = 1" if discoverable_only else "")
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM credentials WHERE {where} ORDER BY seq DESC", (rp_id,)
        ).fetchall()
        return [_row(r) for r in rows]

    def prf_secret(self, credential_id: bytes) -> bytes:
        """The credential's PRF secret, made and stored now if an older release left none."""
        with self._transaction():
            row = self._db.execute(
                "SELECT prf_secret FROM credentials WHERE credential_id = ?", (credential_id,)
            ).fetchone()
            if row is None:
                raise CredentialStoreError(f"unknown credential {credential_id.hex()}")
            if row[0] is not None:
                return bytes(row[0])
            secret = os.urandom(PRF_SECRET_LEN)
            self._db.execute(
                "UPDATE credentials SET prf_secret = ? WHERE credential_id = ?",
                (secret, credential_id),
            )
        return secret

    def all(self) -> list[StoredCredential]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM credentials ORDER BY seq").fetchall()
        return [_row(r) for r in rows]

    def increment_counter(self, credential_id: bytes) -> int:
        """Bump and persist the signature counter; return the new value."""
        with self._transaction():
            row = self._db.execute(
                "UPDATE credentials SET sign_count = sign_count + 1 WHERE credential_id = ? "
                "RETURNING sign_count",
                (credential_id,),
            ).fetchone()
        if row is None:
            raise CredentialStoreError(f"unknown credential {credential_id.hex()}")
        return int(row[0])

    def delete(self, credential_id: bytes) -> bool:
        with self._transaction():
            cur = self._db.execute(
                "DELETE FROM credentials WHERE credential_id = ?", (credential_id,)
            )
        return cur.rowcount > 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK, so two processes sharing a data dir never interleave."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _row(row: tuple) -> StoredCredential:
    return StoredCredential(
        credential_id=bytes(row[0]),
        rp_id=row[1],
        rp_name=row[2],
        user_id=bytes(row[3]),
        user_name=row[4],
        user_display_name=row[5],
        private_key_der=bytes(row[6]),
        sign_count=int(row[7]),
        seq=int(row[8]),
        discoverable=bool(row[9]),
        prf_secret=bytes(row[10]) if row[10] is not None else None,
    )
