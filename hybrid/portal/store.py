"""The portal's data-access layer: accounts, passkeys and the audit log, on SQLite or PostgreSQL.

One ``Store`` class speaks to either database through DB-API: ``open_store(url)`` picks the driver
from the URL (``sqlite:///path``, a bare file path, or ``postgresql://...`` through psycopg 3).
The SQL is written once with ``?`` placeholders and a few per-dialect type names; the schema is
versioned (table ``schema_version``) and ``migrate()`` applies every step the database lacks, in
order, inside a transaction.

The methods are synchronous and serialised by one lock on one connection; the web application
calls them through ``trio.to_thread`` so a slow database never blocks the event loop. Every
database failure leaves as ``StorageError`` (the portal shows it as the article's "Failed to
register the device for passkey" when it happens while saving a passkey); a second user with the
same name is ``UserExistsError`` and a credential id stored twice is ``DuplicateCredentialError``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hybrid.errors import HybridError

SCHEMA_VERSION = 1


class StorageError(HybridError):
    """The database could not be reached, read or written."""


class UserExistsError(StorageError):
    """An account with this name already exists."""


class DuplicateCredentialError(StorageError):
    """This credential id is already registered (to this or another account)."""


class PasskeyLimitError(StorageError):
    """The account already holds the maximum number of passkeys."""


ROLES = ("user", "support", "admin", "superuser")
# Roles that may open the administration pages, and those that may also remove passkeys there
# (the article: "Depending on the user's role, the Remove passkeys button will be enabled").
ADMIN_VIEW_ROLES = frozenset({"support", "admin", "superuser"})
PASSKEY_REMOVAL_ROLES = frozenset({"admin", "superuser"})


@dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str
    role: str
    user_handle: bytes
    totp_secret: str | None
    totp_last_step: int
    prompt_skipped_at: float | None
    signins_since_skip: int
    created_at: float


@dataclass(frozen=True)
class Passkey:
    id: int
    user_id: int
    credential_id: bytes
    credential_data: bytes
    sign_count: int
    name: str
    kind: str
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    subject: str
    detail: str


_USER_COLUMNS = (
    "id, name, password_hash, role, user_handle, totp_secret, totp_last_step, "
    "prompt_skipped_at, signins_since_skip, created_at"
)
_PASSKEY_COLUMNS = (
    "id, user_id, credential_id, credential_data, sign_count, name, kind, created_at, last_used_at"
)

# Schema steps: index i takes the database from version i to i + 1. {pk}, {blob} and {ref} are
# filled in per dialect.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE users (
            id {pk},
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            user_handle {blob} NOT NULL UNIQUE,
            totp_secret TEXT,
            totp_last_step BIGINT NOT NULL DEFAULT 0,
            prompt_skipped_at DOUBLE PRECISION,
            signins_since_skip INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE passkeys (
            id {pk},
            user_id {ref} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            credential_id {blob} NOT NULL UNIQUE,
            credential_data {blob} NOT NULL,
            sign_count BIGINT NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_used_at DOUBLE PRECISION
        )""",
        "CREATE INDEX passkeys_by_user ON passkeys (user_id)",
        """CREATE TABLE audit_log (
            id {pk},
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
    ],
]


@dataclass(frozen=True)
class _Dialect:
    name: str
    pk: str
    blob: str
    ref: str
    placeholder: str
    errors: tuple[type[BaseException], ...]
    integrity_errors: tuple[type[BaseException], ...]

    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder) if self.placeholder != "?" else text


_SQLITE = _Dialect(
    "sqlite",
    pk="INTEGER PRIMARY KEY AUTOINCREMENT",
    blob="BLOB",
    ref="INTEGER",
    placeholder="?",
    errors=(sqlite3.Error,),
    integrity_errors=(sqlite3.IntegrityError,),
)


def _postgres_dialect() -> _Dialect:
    import psycopg

    return _Dialect(
        "postgresql",
        pk="BIGSERIAL PRIMARY KEY",
        blob="BYTEA",
        ref="BIGINT",
        placeholder="%s",
        errors=(psycopg.Error,),
        integrity_errors=(psycopg.errors.IntegrityError,),
    )


class Store:
    """Accounts, passkeys and the audit log in one database (see the module docstring)."""

    def __init__(self, connection: Any, dialect: _Dialect, description: str) -> None:
        self._conn = connection
        self._dialect = dialect
        self._lock = threading.Lock()
        self.description = description

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect.name

    # ---- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction; database errors become ``StorageError``."""
        with self._lock:
            try:
                cursor = self._conn.cursor()
                if self._dialect.name == "sqlite":
                    # Take the write lock at once, so a check-then-insert is atomic.
                    cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield cursor
                except BaseException:
                    self._conn.rollback()
                    raise
                else:
                    self._conn.commit()
                finally:
                    cursor.close()
            except StorageError:
                raise
            except self._dialect.integrity_errors as exc:
                raise StorageError(f"{self.dialect}: constraint violated: {exc}") from None
            except self._dialect.errors as exc:
                raise StorageError(f"{self.dialect}: {type(exc).__name__}: {exc}") from None

    def _run(self, cursor: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor.execute(self._dialect.sql(sql), tuple(params))
        return cursor

    def _insert(self, cursor: Any, sql: str, params: Sequence[Any]) -> int:
        # RETURNING works on both (SQLite >= 3.35, every PostgreSQL we support).
        row = self._run(cursor, sql + " RETURNING id", params).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- schema -----------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._transaction() as cur:
            return self._version(cur)

    def _version(self, cur: Any) -> int:
        self._run(cur, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._run(cur, "SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def migrate(self) -> int:
        """Bring the schema to ``SCHEMA_VERSION``; return the version found before."""
        d = self._dialect
        with self._transaction() as cur:
            if d.name == "postgresql":
                # Two portals starting on one database must not both migrate.
                self._run(cur, "SELECT pg_advisory_xact_lock(804810)")
            found = self._version(cur)
            if found > SCHEMA_VERSION:
                raise StorageError(
                    f"the database has schema version {found}, newer than this portal's "
                    f"{SCHEMA_VERSION}: upgrade hybrid"
                )
            for version in range(found, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    self._run(cur, statement.format(pk=d.pk, blob=d.blob, ref=d.ref))
                self._run(cur, "INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
            return found

    # ---- users ------------------------------------------------------------------------------

    def create_user(
        self, name: str, password_hash: str, role: str, user_handle: bytes, now: float
    ) -> User:
        if role not in ROLES:
            raise StorageError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        with self._transaction() as cur:
            if self._run(cur, "SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserExistsError(f"a user named {name!r} already exists")
            self._insert(
                cur,
                "INSERT INTO users (name, password_hash, role, user_handle, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, password_hash, role, user_handle, now),
            )
            return self._user_where(cur, "name = ?", name)  # type: ignore[return-value]

    def _user_where(self, cur: Any, where: str, value: Any) -> User | None:
        row = self._run(cur, f"SELECT {_USER_COLUMNS} FROM users WHERE {where}", (value,))
        found = row.fetchone()
        return _user(found) if found else None

    def get_user(self, name: str) -> User | None:
        with self._transaction() as cur:
            return self._user_where(cur, "name = ?", name)

    def get_user_by_id(self, user_id: int) -> User | None:
        with self._transaction() as cur:
            return self._user_where(cur, "id = ?", user_id)

    def list_users(self) -> list[User]:
        with self._transaction() as cur:
            rows = self._run(cur, f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()
            return [_user(r) for r in rows]

    def set_password(self, user_id: int, password_hash: str) -> None:
        with self._transaction() as cur:
            self._run(
                cur, "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
            )

    def enrol_totp(self, user_id: int, secret: str, step: int) -> None:
        with self._transaction() as cur:
            self._run(
                cur,
                "UPDATE users SET totp_secret = ?, totp_last_step = ? WHERE id = ?",
                (secret, step, user_id),
            )

    def use_totp_step(self, user_id: int, step: int) -> bool:
        """Mark TOTP time step ``step`` used; False if it (or a later one) was used already.

        One conditional UPDATE, so two requests racing with the same code cannot both win.
        """
        with self._transaction() as cur:
            cur = self._run(
                cur,
                "UPDATE users SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?",
                (step, user_id, step),
            )
            return bool(cur.rowcount == 1)

    def record_prompt_skip(self, user_id: int, now: float) -> None:
        with self._transaction() as cur:
            self._run(
                cur,
                "UPDATE users SET prompt_skipped_at = ?, signins_since_skip = 0 WHERE id = ?",
                (now, user_id),
            )

    def record_signin(self, user_id: int) -> User:
        """Count one successful sign-in (for the set-up prompt's "ten more sign-ins")."""
        with self._transaction() as cur:
            self._run(
                cur,
                "UPDATE users SET signins_since_skip = signins_since_skip + 1 WHERE id = ?",
                (user_id,),
            )
            user = self._user_where(cur, "id = ?", user_id)
            if user is None:
                raise StorageError(f"user {user_id} disappeared")
            return user

    # ---- passkeys ---------------------------------------------------------------------------

    def passkeys_for(self, user_id: int) -> list[Passkey]:
        with self._transaction() as cur:
            rows = self._run(
                cur,
                f"SELECT {_PASSKEY_COLUMNS} FROM passkeys WHERE user_id = ? ORDER BY id",
                (user_id,),
            ).fetchall()
            return [_passkey(r) for r in rows]

    def passkey_by_credential_id(self, credential_id: bytes) -> Passkey | None:
        with self._transaction() as cur:
            row = self._run(
                cur,
                f"SELECT {_PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?",
                (credential_id,),
            ).fetchone()
            return _passkey(row) if row else None

    def add_passkey(
        self,
        user_id: int,
        *,
        credential_id: bytes,
        credential_data: bytes,
        sign_count: int,
        kind: str,
        name: str | None,
        now: float,
        limit: int,
        actor: str,
        subject: str,
    ) -> Passkey:
        """Store a passkey and its audit entry in one transaction, refusing past ``limit``."""
        with self._transaction() as cur:
            if self._dialect.name == "postgresql":
                # Serialise additions per account so two ceremonies cannot both pass the limit.
                self._run(cur, "SELECT id FROM users WHERE id = ? FOR UPDATE", (user_id,))
            count = int(
                self._run(
                    cur, "SELECT COUNT(*) FROM passkeys WHERE user_id = ?", (user_id,)
                ).fetchone()[0]
            )
            if count >= limit:
                raise PasskeyLimitError(f"the account already has {count} passkeys")
            if self._run(
                cur, "SELECT 1 FROM passkeys WHERE credential_id = ?", (credential_id,)
            ).fetchone():
                raise DuplicateCredentialError("this credential id is already registered")
            taken = {
                r[0]
                for r in self._run(
                    cur, "SELECT name FROM passkeys WHERE user_id = ?", (user_id,)
                ).fetchall()
            }
            # "Passkey N" with the smallest N not in use, so names stay unique after removals.
            label = name or next(
                f"Passkey {n}" for n in range(1, limit + 2) if f"Passkey {n}" not in taken
            )
            new_id = self._insert(
                cur,
                "INSERT INTO passkeys (user_id, credential_id, credential_data, sign_count, name, "
                "kind, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, credential_id, credential_data, sign_count, label, kind, now),
            )
            self._audit(cur, now, actor, "passkey added", subject, f"{label} ({kind})")
            row = self._run(
                cur, f"SELECT {_PASSKEY_COLUMNS} FROM passkeys WHERE id = ?", (new_id,)
            ).fetchone()
            return _passkey(row)

    def record_passkey_use(self, passkey_id: int, sign_count: int, now: float) -> None:
        with self._transaction() as cur:
            self._run(
                cur,
                "UPDATE passkeys SET sign_count = ?, last_used_at = ? WHERE id = ?",
                (sign_count, now, passkey_id),
            )

    def remove_passkeys(
        self, user_id: int, passkey_ids: Sequence[int] | None, *, actor: str, subject: str,
        now: float,
    ) -> list[Passkey]:  # fmt: skip
        """Remove some (or, with ``None``, all) passkeys of one account; audit each removal."""
        with self._transaction() as cur:
            rows = self._run(
                cur,
                f"SELECT {_PASSKEY_COLUMNS} FROM passkeys WHERE user_id = ? ORDER BY id",
                (user_id,),
            ).fetchall()
            wanted = None if passkey_ids is None else set(passkey_ids)
            removed = [_passkey(r) for r in rows if wanted is None or int(r[0]) in wanted]
            for passkey in removed:
                self._run(cur, "DELETE FROM passkeys WHERE id = ?", (passkey.id,))
                self._audit(
                    cur, now, actor, "passkey removed", subject, f"{passkey.name} ({passkey.kind})"
                )
            return removed

    # ---- audit log --------------------------------------------------------------------------

    def _audit(
        self, cur: Any, now: float, actor: str, action: str, subject: str, detail: str
    ) -> None:
        self._insert(
            cur,
            "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
            (now, actor, action, subject, detail),
        )

    def add_audit(self, now: float, actor: str, action: str, subject: str, detail: str) -> None:
        with self._transaction() as cur:
            self._audit(cur, now, actor, action, subject, detail)

    def audit_entries(self, limit: int = 200) -> list[AuditEntry]:
        with self._transaction() as cur:
            rows = self._run(
                cur,
                "SELECT id, at, actor, action, subject, detail FROM audit_log "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [AuditEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def _user(row: Sequence[Any]) -> User:
    return User(
        id=int(row[0]),
        name=row[1],
        password_hash=row[2],
        role=row[3],
        user_handle=bytes(row[4]),
        totp_secret=row[5],
        totp_last_step=int(row[6]),
        prompt_skipped_at=None if row[7] is None else float(row[7]),
        signins_since_skip=int(row[8]),
        created_at=float(row[9]),
    )


def _passkey(row: Sequence[Any]) -> Passkey:
    return Passkey(
        id=int(row[0]),
        user_id=int(row[1]),
        credential_id=bytes(row[2]),
        credential_data=bytes(row[3]),
        sign_count=int(row[4]),
        name=row[5],
        kind=row[6],
        created_at=float(row[7]),
        last_used_at=None if row[8] is None else float(row[8]),
    )


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL (``sqlite:///abs/path``, ``sqlite:rel``) or bare path names."""
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        # sqlite:///relative/file and sqlite:////absolute/file, as SQLAlchemy spells them.
        return Path(rest[3:] if rest.startswith("///") else rest.removeprefix("//"))
    if "://" in url:
        return None
    return Path(url)


def open_store(url: str) -> Store:
    """Connect to ``url`` and migrate the schema; ``StorageError`` says why it cannot."""
    scheme = urlparse(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        return _open_postgres(url)
    path = sqlite_path(url)
    if path is None:
        raise StorageError(
            f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://..."
        )
    return _open_sqlite(path)


def _open_sqlite(path: Path) -> Store:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA busy_timeout = 5000")
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open SQLite database {path}: {exc}") from None
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; commit/rollback still work.
    store = Store(_AutocommitSqlite(conn), _SQLITE, f"sqlite:///{path}")
    store.migrate()
    return store


class _AutocommitSqlite:
    """sqlite3 in autocommit mode with explicit BEGIN; commit/rollback only inside one."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> sqlite3.Cursor:
        return self._conn.cursor()

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


def _open_postgres(url: str) -> Store:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a runtime dependency
        raise StorageError("PostgreSQL needs the psycopg package (pip install psycopg)") from None
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        parts = urlparse(url)  # shown without user name or password
        where = f"{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        safe = parts._replace(netloc=where).geturl()
        raise StorageError(f"cannot connect to PostgreSQL at {safe}: {exc}") from None
    store = Store(conn, _postgres_dialect(), "postgresql")
    store.migrate()
    return store
