-- Mailfleet storage schema. Storage is the only service that touches it.

-- UIDVALIDITY values come from one global sequence so that a mailbox that is
-- deleted and recreated never gets its old value back (RFC 3501 §2.3.1.1).
CREATE SEQUENCE uid_validity_seq START WITH 1 MINVALUE 1 MAXVALUE 4294967295;

CREATE TABLE domains (
    id                   BIGSERIAL PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    catch_all_account_id BIGINT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id            BIGSERIAL PRIMARY KEY,
    domain_id     BIGINT NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
    local_part    TEXT NOT NULL,
    address       TEXT NOT NULL UNIQUE,
    -- argon2id PHC string; the plaintext is never stored.
    password_hash TEXT NOT NULL,
    -- RFC 1939 §7 APOP needs a shared secret the server can read.
    apop_secret   TEXT,
    disabled      BOOLEAN NOT NULL DEFAULT false,
    quota_bytes   BIGINT NOT NULL DEFAULT 0,
    used_bytes    BIGINT NOT NULL DEFAULT 0,
    message_count BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE domains ADD CONSTRAINT domains_catch_all_fk
    FOREIGN KEY (catch_all_account_id) REFERENCES accounts(id) ON DELETE SET NULL;

CREATE TABLE aliases (
    id         BIGSERIAL PRIMARY KEY,
    domain_id  BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    address    TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE alias_targets (
    alias_id   BIGINT NOT NULL REFERENCES aliases(id) ON DELETE CASCADE,
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    PRIMARY KEY (alias_id, account_id)
);

CREATE TABLE mailboxes (
    id             BIGSERIAL PRIMARY KEY,
    account_id     BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    special_use    TEXT[] NOT NULL DEFAULT '{}',
    uid_validity   BIGINT NOT NULL DEFAULT nextval('uid_validity_seq'),
    -- Next UID to assign; only ever grows (RFC 3501 §2.3.1.1).
    uid_next       BIGINT NOT NULL DEFAULT 1,
    highest_modseq BIGINT NOT NULL DEFAULT 1,
    -- Messages with uid >= recent_floor are \Recent until a SELECT claims them.
    recent_floor   BIGINT NOT NULL DEFAULT 1,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);

CREATE TABLE subscriptions (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);

-- Content-addressed raw messages. The bytes live in the blob store; the row
-- carries what was computed once from them at first store.
CREATE TABLE blobs (
    id             TEXT PRIMARY KEY,          -- lowercase hex SHA-256
    size           BIGINT NOT NULL,
    -- Parsed metadata (prost-encoded Envelope / BodyPart, offsets relative
    -- to the blob); NULL until the blob is first delivered or appended.
    envelope       BYTEA,
    body_structure BYTEA,
    header_size    BIGINT,
    sent_date      DATE,
    -- Decoded, unfolded "field: value" lines and decoded text parts, for
    -- SEARCH evaluated in Postgres.
    header_text    TEXT,
    body_text      TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id            BIGSERIAL PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    mailbox_id    BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid           BIGINT NOT NULL,
    modseq        BIGINT NOT NULL,
    blob_id       TEXT NOT NULL REFERENCES blobs(id),
    -- Per-recipient header lines (Return-Path, Delivered-To) served before the blob.
    header_prefix BYTEA NOT NULL DEFAULT '',
    size          BIGINT NOT NULL,
    internal_date TIMESTAMPTZ NOT NULL,
    flags         TEXT[] NOT NULL DEFAULT '{}',
    UNIQUE (mailbox_id, uid)
);
CREATE INDEX messages_mailbox_modseq ON messages (mailbox_id, modseq);
CREATE INDEX messages_blob ON messages (blob_id);

-- Expunged UIDs with the modseq of their removal (QRESYNC VANISHED).
CREATE TABLE expunged (
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid        BIGINT NOT NULL,
    modseq     BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);

-- Idempotency of delivery: one row per (job, recipient) key ever delivered.
CREATE TABLE deliveries (
    delivery_key TEXT PRIMARY KEY,
    account_id   BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    mailbox_id   BIGINT NOT NULL,
    uid          BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Leases (POP3 maildrop lock across replicas).
CREATE TABLE locks (
    account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, name)
);
