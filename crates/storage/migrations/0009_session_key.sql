-- The secret that signs session tokens (storage/src/auth/session.rs): one
-- row, written by the first storage replica to start and read by every
-- replica, so that each accepts the tokens of the others. Deleting it (and
-- restarting every replica) rotates the key and ends every session.
CREATE TABLE session_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea NOT NULL CHECK (octet_length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
