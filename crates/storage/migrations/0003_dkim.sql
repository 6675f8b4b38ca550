-- DKIM signing keys (RFC 6376), one per (domain, selector). Private keys are
-- secrets: only storage reads this table, and only Directory.GetDkimKey
-- (the outbound relay) returns the private key.
CREATE TABLE dkim_keys (
    domain          TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
    selector        TEXT NOT NULL,
    -- 'rsa-sha256' or 'ed25519-sha256'
    algorithm       TEXT NOT NULL,
    -- PKCS#8 PEM
    private_key_pem TEXT NOT NULL,
    -- base64 public key, the p= tag of the DNS record
    public_key      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, selector)
);
