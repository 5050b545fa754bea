-- Admin side: API tokens for scripts (stored as SHA-256 of the token, never the token itself).

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    username     TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_us   BIGINT NOT NULL,
    last_used_us BIGINT,
    revoked_us   BIGINT
);

CREATE INDEX sessions_expiry ON sessions (expires_us);
