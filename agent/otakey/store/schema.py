"""The store's one schema, as numbered migrations applied in order when a store opens.

Each migration runs once, in the same transaction as its row in ``schema_version``; opening a
database again applies nothing. A database whose schema is newer than this code is refused
rather than written with an older idea of the tables.

Both backends share the statements: ``{blob}``, ``{bigint}``, ``{real}`` and ``{id_pk}`` are
filled per dialect, and what only one dialect can say (triggers) is listed separately. Secrets are
stored sealed (``*_sealed`` columns, see ``crypto.py``); nothing else in the schema is secret —
fingerprints are MACs of a fixed label, never keys.
"""

from __future__ import annotations

from dataclasses import dataclass

DIALECTS = ("sqlite", "postgresql")

_TYPES = {
    "sqlite": {"blob": "BLOB", "bigint": "INTEGER", "real": "REAL",
               "id_pk": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"blob": "BYTEA", "bigint": "BIGINT", "real": "DOUBLE PRECISION",
                   "id_pk": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"},
}

SCHEMA_VERSION_DDL = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
              "description TEXT NOT NULL, applied_at REAL NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                  "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)",
}


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    sqlite: tuple[str, ...] = ()
    postgresql: tuple[str, ...] = ()

    def for_dialect(self, dialect: str) -> list[str]:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}")
        types = _TYPES[dialect]
        return [s.format(**types) for s in self.statements] + list(getattr(self, dialect))


_APPEND_ONLY = "the audit log is append-only"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "initial schema",
        statements=(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value {blob} NOT NULL)",
            """CREATE TABLE products (
                po_id {bigint} PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                quantity {bigint} NOT NULL,
                pk_sealed {blob} NOT NULL,
                frozen INTEGER NOT NULL DEFAULT 0,
                revoked INTEGER NOT NULL DEFAULT 0,
                restricted INTEGER NOT NULL DEFAULT 0,
                created_at {real} NOT NULL)""",
            """CREATE TABLE product_allow (
                po_id {bigint} NOT NULL REFERENCES products(po_id),
                device_id {blob} NOT NULL,
                PRIMARY KEY (po_id, device_id))""",
            """CREATE TABLE devices (
                device_id {blob} PRIMARY KEY,
                po_id {bigint} NOT NULL REFERENCES products(po_id),
                state TEXT NOT NULL,
                ak_version {bigint} NOT NULL DEFAULT 0,
                ak_sealed {blob},
                ak_pending_version {bigint} NOT NULL DEFAULT 0,
                ak_pending_sealed {blob},
                ak_nonce_d {blob},
                ak_nonce_a {blob},
                pending_action INTEGER NOT NULL DEFAULT 0,
                provisioned_at {real},
                ci_at {real},
                ci_ak_version {bigint},
                ci_cloud_version {bigint},
                ci_cloud_platform INTEGER,
                ci_ak_fp {blob},
                ci_cloud_fp {blob},
                ci_fw_version {bigint},
                ci_app_hash {blob},
                ci_last_error INTEGER,
                created_at {real} NOT NULL,
                updated_at {real} NOT NULL,
                row_version {bigint} NOT NULL)""",
            "CREATE INDEX devices_po_state ON devices (po_id, state)",
            """CREATE TABLE credentials (
                device_id {blob} NOT NULL REFERENCES devices(device_id),
                version {bigint} NOT NULL,
                platform TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                client_id TEXT NOT NULL,
                username TEXT NOT NULL,
                secret_sealed {blob} NOT NULL,
                ref TEXT NOT NULL,
                state TEXT NOT NULL,
                created_at {real} NOT NULL,
                changed_at {real} NOT NULL,
                PRIMARY KEY (device_id, version))""",
            # At most one active and one pending credential per device, whatever the platform:
            # a second replica registering a second pending credential conflicts here.
            "CREATE UNIQUE INDEX credentials_one_active ON credentials (device_id) WHERE state = 'active'",
            "CREATE UNIQUE INDEX credentials_one_pending ON credentials (device_id) WHERE state = 'pending'",
            """CREATE TABLE exchanges (
                device_id {blob} NOT NULL,
                nonce_d {blob} NOT NULL,
                request_type INTEGER NOT NULL,
                nonce_a {blob} NOT NULL,
                answer_sealed {blob} NOT NULL,
                request_hash {blob} NOT NULL,
                created_at {real} NOT NULL,
                PRIMARY KEY (device_id, nonce_d, request_type))""",
            "CREATE INDEX exchanges_age ON exchanges (created_at)",
            """CREATE TABLE audit (
                id {id_pk},
                at {real} NOT NULL,
                event TEXT NOT NULL,
                device_id {blob},
                po_id {bigint},
                detail TEXT NOT NULL)""",
            "CREATE INDEX audit_device ON audit (device_id, id)",
            "CREATE INDEX audit_po_event ON audit (po_id, event, at)",
            """CREATE TABLE anomalies (
                id {id_pk},
                at {real} NOT NULL,
                kind TEXT NOT NULL,
                device_id {blob},
                po_id {bigint},
                detail TEXT NOT NULL,
                acknowledged INTEGER NOT NULL DEFAULT 0)""",
        ),
        # The audit log must stay append-only even against a careless query: the database itself
        # refuses to change or drop its rows.
        sqlite=(
            f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END",
            f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END",
        ),
        postgresql=(
            "CREATE FUNCTION otakey_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
            "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION otakey_audit_append_only()",
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION otakey_audit_append_only()",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, LATEST_VERSION + 1)), "migrations are 1..N"
