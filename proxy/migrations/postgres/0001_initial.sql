-- Permit on PostgreSQL, schema version 1: the same tables as the embedded SQLite store
-- (location, permitted-terminal lists, credentials, stored items), shared by every
-- proxy node that names this database.

-- Location service (RFC 3261 §10): every AOR ever registered, and its bindings.
-- `changed_at` lets a node that lost its LISTEN connection reload what changed.
CREATE TABLE binding_aor (
    aor TEXT PRIMARY KEY,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX binding_aor_changed ON binding_aor (changed_at);
CREATE TABLE binding (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    q INTEGER NOT NULL,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    path TEXT NOT NULL,
    source TEXT,
    max_calls BIGINT,
    load_query BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (aor, contact)
);
CREATE INDEX binding_expiry ON binding (expires_at);

-- Permitted-terminal lists (docs/permits.md); `permit_change` is the change log the
-- nodes read after a NOTIFY (NULL callee: everything changed).
CREATE TABLE permit_list (
    callee TEXT PRIMARY KEY,
    etag TEXT NOT NULL
);
CREATE TABLE permit_entry (
    callee TEXT NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (callee, entry)
);
CREATE TABLE permit_change (
    seq BIGSERIAL PRIMARY KEY,
    callee TEXT
);

-- Credentials (RFC 3261 §22): HA1 hashes only, never a password.
CREATE TABLE sip_user (
    username TEXT PRIMARY KEY,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL
);
-- The served domain (key 'domain').
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Store-and-forward: deposited items and announced uploads.
CREATE TABLE item (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    sender TEXT NOT NULL,
    content_type TEXT NOT NULL,
    attributes TEXT NOT NULL,
    body BYTEA NOT NULL,
    size BIGINT NOT NULL,
    sha256 BYTEA NOT NULL,
    stored_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX item_owner ON item (owner, stored_at);
CREATE INDEX item_sender ON item (sender);
CREATE INDEX item_expiry ON item (expires_at);
CREATE TABLE upload_slot (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    sender TEXT NOT NULL,
    content_type TEXT NOT NULL,
    attributes TEXT NOT NULL,
    name TEXT,
    size BIGINT NOT NULL,
    sha256 BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
