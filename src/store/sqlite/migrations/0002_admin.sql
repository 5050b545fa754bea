-- Admin side: API tokens for scripts (stored as SHA-256 of the token, never the token itself).

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    username     TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_us   INTEGER NOT NULL,
    last_used_us INTEGER,
    revoked_us   INTEGER
);

CREATE INDEX sessions_expiry ON sessions (expires_us);
