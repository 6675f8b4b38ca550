-- Failed logins, for the auth throttle (storage/src/auth_throttle.rs):
-- counted per client address and per account over every gateway replica
-- and protocol. UNLOGGED: no WAL per failure (an attacker's guesses must
-- not cost a flush each); a crash only forgets recent failures. Storage
-- deletes rows older than the window.
CREATE UNLOGGED TABLE auth_failures (
    -- The client's address; IPv6 by its /64. NULL: unknown.
    source inet,
    -- The user name tried, lowercased (whether or not such an account exists).
    account text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX auth_failures_by_source ON auth_failures (source, at);
CREATE INDEX auth_failures_by_account ON auth_failures (account, at);
