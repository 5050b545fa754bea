-- registerbrygga schema (PostgreSQL). Times are microseconds since the Unix epoch (UTC), booleans 0/1,
-- payload columns are AES-GCM ciphertext written by the store, never plaintext.

CREATE TABLE watermarks (
    connector   TEXT NOT NULL,
    unit        TEXT NOT NULL,
    value_us    BIGINT NOT NULL,
    updated_us  BIGINT NOT NULL,
    PRIMARY KEY (connector, unit)
);

CREATE TABLE runs (
    id              BIGSERIAL PRIMARY KEY,
    connector       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    scheduled_for_us BIGINT,
    started_us      BIGINT NOT NULL,
    ended_us        BIGINT,
    status          TEXT NOT NULL,
    owner           TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    stats           TEXT NOT NULL DEFAULT '{}',
    error           TEXT
);
CREATE INDEX runs_connector ON runs (connector, started_us);

CREATE TABLE ticks (
    connector        TEXT NOT NULL,
    scheduled_for_us BIGINT NOT NULL,
    claimed_by       TEXT NOT NULL,
    claimed_us       BIGINT NOT NULL,
    run_id           BIGINT,
    PRIMARY KEY (connector, scheduled_for_us)
);

CREATE TABLE connector_leases (
    connector   TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_us  BIGINT NOT NULL,
    run_id      BIGINT
);

CREATE TABLE documents (
    connector    TEXT NOT NULL,
    doc_key      TEXT NOT NULL,
    patient_key  TEXT NOT NULL,
    unit         TEXT,
    kind         TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    nullified    BIGINT NOT NULL DEFAULT 0,
    record_date  TEXT,
    first_seen_us BIGINT NOT NULL,
    updated_us   BIGINT NOT NULL,
    PRIMARY KEY (connector, doc_key)
);
CREATE INDEX documents_patient ON documents (connector, patient_key);
CREATE INDEX documents_unit_date ON documents (connector, unit, record_date);

CREATE TABLE registrations (
    idem_key          TEXT PRIMARY KEY,
    register          TEXT NOT NULL,
    connector         TEXT NOT NULL,
    unit              TEXT NOT NULL,
    form              TEXT NOT NULL,
    subject           TEXT,
    event_id          TEXT,
    delivered_hash    TEXT,
    delivered_payload BYTEA,
    state             TEXT NOT NULL,
    updated_us        BIGINT NOT NULL
);
CREATE INDEX registrations_subject ON registrations (connector, subject);

CREATE TABLE records (
    id               BIGSERIAL PRIMARY KEY,
    idem_key         TEXT NOT NULL,
    version          BIGINT NOT NULL,
    register         TEXT NOT NULL,
    connector        TEXT NOT NULL,
    unit             TEXT NOT NULL,
    form             TEXT NOT NULL,
    subject          TEXT,
    op               TEXT NOT NULL,
    payload          BYTEA,
    payload_hash     TEXT,
    lookup           BYTEA,
    state            TEXT NOT NULL,
    reason           TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_us  BIGINT NOT NULL,
    first_attempt_us BIGINT,
    lease_owner      TEXT,
    lease_expires_us BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    register_ref     TEXT,
    correlation_id   TEXT NOT NULL,
    created_us       BIGINT NOT NULL,
    updated_us       BIGINT NOT NULL,
    delivered_us     BIGINT,
    UNIQUE (idem_key, version)
);
CREATE INDEX records_claim ON records (state, next_attempt_us);
CREATE INDEX records_idem ON records (idem_key, state);
CREATE INDEX records_lease ON records (state, lease_expires_us);
CREATE INDEX records_connector ON records (connector, register, unit, created_us);

CREATE TABLE attempts (
    id           BIGSERIAL PRIMARY KEY,
    record_id    BIGINT NOT NULL,
    idem_key     TEXT NOT NULL,
    owner        TEXT NOT NULL,
    started_us   BIGINT NOT NULL,
    ended_us     BIGINT,
    operation    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    http_status  BIGINT,
    detail       TEXT,
    register_ref TEXT
);
CREATE INDEX attempts_record ON attempts (record_id);
CREATE INDEX attempts_idem ON attempts (idem_key);
CREATE INDEX attempts_time ON attempts (started_us);

CREATE TABLE quarantine (
    id          BIGSERIAL PRIMARY KEY,
    connector   TEXT NOT NULL,
    run_id      BIGINT,
    at_us       BIGINT NOT NULL,
    document    TEXT NOT NULL,
    field       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    patient_key TEXT,
    raw         BYTEA,
    resolved_us BIGINT,
    resolved_by TEXT
);
CREATE INDEX quarantine_open ON quarantine (resolved_us, at_us);

CREATE TABLE audit_events (
    seq            BIGINT NOT NULL,
    at_us          BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    subject        TEXT NOT NULL,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    PRIMARY KEY (seq, at_us)
) PARTITION BY RANGE (at_us);
-- Monthly partitions are created ahead by the store (ensure_audit_partitions); this one catches
-- anything outside them so an insert never fails.
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE INDEX audit_seq ON audit_events (seq);
CREATE INDEX audit_time ON audit_events (at_us);
CREATE INDEX audit_kind ON audit_events (kind, at_us);

CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL,
    at_us BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, at_us) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE audit_anchor (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL,
    pruned_us BIGINT NOT NULL
);

CREATE TABLE users (
    username          TEXT PRIMARY KEY,
    password_hash     TEXT NOT NULL,
    role              TEXT NOT NULL,
    can_view_patients BIGINT NOT NULL DEFAULT 0,
    disabled          BIGINT NOT NULL DEFAULT 0,
    created_us        BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_us  BIGINT NOT NULL,
    expires_us  BIGINT NOT NULL
);

CREATE TABLE worklist (
    idem_key    TEXT PRIMARY KEY,
    connector   TEXT NOT NULL,
    unit        TEXT NOT NULL,
    form        TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    patient_ref BYTEA NOT NULL,
    missing     TEXT NOT NULL,
    event_date  TEXT,
    since_us    BIGINT NOT NULL,
    updated_us  BIGINT NOT NULL
);
CREATE INDEX worklist_unit ON worklist (connector, unit);

CREATE TABLE sar_episodes (
    episode_key      TEXT PRIMARY KEY,
    connector        TEXT NOT NULL,
    unit             TEXT NOT NULL,
    patient_key      TEXT NOT NULL,
    joint            TEXT NOT NULL,
    first_visit_date TEXT NOT NULL,
    forms_due        TEXT NOT NULL,
    updated_us       BIGINT NOT NULL
);
CREATE INDEX sar_episodes_unit ON sar_episodes (connector, unit, first_visit_date);
CREATE INDEX sar_episodes_patient ON sar_episodes (connector, patient_key);

CREATE TABLE pvk_results (
    connector    TEXT NOT NULL,
    rule_year    BIGINT NOT NULL,
    unit         TEXT NOT NULL,
    year         BIGINT NOT NULL,
    month        BIGINT NOT NULL,
    indicator    TEXT NOT NULL,
    numerator    BIGINT,
    denominator  BIGINT,
    computable   BIGINT NOT NULL,
    suppressed   BIGINT NOT NULL DEFAULT 0,
    note         TEXT,
    patient_list BYTEA,
    computed_us  BIGINT NOT NULL,
    PRIMARY KEY (connector, rule_year, unit, year, month, indicator)
);

CREATE TABLE pvk_quality (
    connector   TEXT NOT NULL,
    unit        TEXT NOT NULL,
    year        BIGINT NOT NULL,
    month       BIGINT NOT NULL,
    measure     TEXT NOT NULL,
    count       BIGINT NOT NULL,
    computed_us BIGINT NOT NULL,
    PRIMARY KEY (connector, unit, year, month, measure)
);

CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_us BIGINT NOT NULL
);
