-- registerbrygga schema (SQLite). Times are microseconds since the Unix epoch (UTC), booleans 0/1,
-- payload columns are AES-GCM ciphertext written by the store, never plaintext.

CREATE TABLE watermarks (
    connector   TEXT NOT NULL,
    unit        TEXT NOT NULL,
    value_us    INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL,
    PRIMARY KEY (connector, unit)
);

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    connector       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    scheduled_for_us INTEGER,
    started_us      INTEGER NOT NULL,
    ended_us        INTEGER,
    status          TEXT NOT NULL,
    owner           TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    stats           TEXT NOT NULL DEFAULT '{}',
    error           TEXT
);
CREATE INDEX runs_connector ON runs (connector, started_us);

CREATE TABLE ticks (
    connector        TEXT NOT NULL,
    scheduled_for_us INTEGER NOT NULL,
    claimed_by       TEXT NOT NULL,
    claimed_us       INTEGER NOT NULL,
    run_id           INTEGER,
    PRIMARY KEY (connector, scheduled_for_us)
);

CREATE TABLE connector_leases (
    connector   TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_us  INTEGER NOT NULL,
    run_id      INTEGER
);

CREATE TABLE documents (
    connector    TEXT NOT NULL,
    doc_key      TEXT NOT NULL,
    patient_key  TEXT NOT NULL,
    unit         TEXT,
    kind         TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    payload      BLOB NOT NULL,
    nullified    INTEGER NOT NULL DEFAULT 0,
    record_date  TEXT,
    first_seen_us INTEGER NOT NULL,
    updated_us   INTEGER NOT NULL,
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
    delivered_payload BLOB,
    state             TEXT NOT NULL,
    updated_us        INTEGER NOT NULL
);
CREATE INDEX registrations_subject ON registrations (connector, subject);

CREATE TABLE records (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    idem_key         TEXT NOT NULL,
    version          INTEGER NOT NULL,
    register         TEXT NOT NULL,
    connector        TEXT NOT NULL,
    unit             TEXT NOT NULL,
    form             TEXT NOT NULL,
    subject          TEXT,
    op               TEXT NOT NULL,
    payload          BLOB,
    payload_hash     TEXT,
    lookup           BLOB,
    state            TEXT NOT NULL,
    reason           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_us  INTEGER NOT NULL,
    first_attempt_us INTEGER,
    lease_owner      TEXT,
    lease_expires_us INTEGER,
    last_status      INTEGER,
    last_error       TEXT,
    register_ref     TEXT,
    correlation_id   TEXT NOT NULL,
    created_us       INTEGER NOT NULL,
    updated_us       INTEGER NOT NULL,
    delivered_us     INTEGER,
    UNIQUE (idem_key, version)
);
CREATE INDEX records_claim ON records (state, next_attempt_us);
CREATE INDEX records_idem ON records (idem_key, state);
CREATE INDEX records_lease ON records (state, lease_expires_us);
CREATE INDEX records_connector ON records (connector, register, unit, created_us);

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id    INTEGER NOT NULL,
    idem_key     TEXT NOT NULL,
    owner        TEXT NOT NULL,
    started_us   INTEGER NOT NULL,
    ended_us     INTEGER,
    operation    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    http_status  INTEGER,
    detail       TEXT,
    register_ref TEXT
);
CREATE INDEX attempts_record ON attempts (record_id);
CREATE INDEX attempts_idem ON attempts (idem_key);
CREATE INDEX attempts_time ON attempts (started_us);

CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    connector   TEXT NOT NULL,
    run_id      INTEGER,
    at_us       INTEGER NOT NULL,
    document    TEXT NOT NULL,
    field       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    patient_key TEXT,
    raw         BLOB,
    resolved_us INTEGER,
    resolved_by TEXT
);
CREATE INDEX quarantine_open ON quarantine (resolved_us, at_us);

CREATE TABLE audit_events (
    seq            INTEGER PRIMARY KEY,
    at_us          INTEGER NOT NULL,
    actor          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    subject        TEXT NOT NULL,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_time ON audit_events (at_us);
CREATE INDEX audit_kind ON audit_events (kind, at_us);

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL,
    at_us INTEGER NOT NULL
);
INSERT INTO audit_head (id, seq, hash, at_us) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE audit_anchor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL,
    pruned_us INTEGER NOT NULL
);

CREATE TABLE users (
    username          TEXT PRIMARY KEY,
    password_hash     TEXT NOT NULL,
    role              TEXT NOT NULL,
    can_view_patients INTEGER NOT NULL DEFAULT 0,
    disabled          INTEGER NOT NULL DEFAULT 0,
    created_us        INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_us  INTEGER NOT NULL,
    expires_us  INTEGER NOT NULL
);

CREATE TABLE worklist (
    idem_key    TEXT PRIMARY KEY,
    connector   TEXT NOT NULL,
    unit        TEXT NOT NULL,
    form        TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    patient_ref BLOB NOT NULL,
    missing     TEXT NOT NULL,
    event_date  TEXT,
    since_us    INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL
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
    updated_us       INTEGER NOT NULL
);
CREATE INDEX sar_episodes_unit ON sar_episodes (connector, unit, first_visit_date);
CREATE INDEX sar_episodes_patient ON sar_episodes (connector, patient_key);

CREATE TABLE pvk_results (
    connector    TEXT NOT NULL,
    rule_year    INTEGER NOT NULL,
    unit         TEXT NOT NULL,
    year         INTEGER NOT NULL,
    month        INTEGER NOT NULL,
    indicator    TEXT NOT NULL,
    numerator    INTEGER,
    denominator  INTEGER,
    computable   INTEGER NOT NULL,
    suppressed   INTEGER NOT NULL DEFAULT 0,
    note         TEXT,
    patient_list BLOB,
    computed_us  INTEGER NOT NULL,
    PRIMARY KEY (connector, rule_year, unit, year, month, indicator)
);

CREATE TABLE pvk_quality (
    connector   TEXT NOT NULL,
    unit        TEXT NOT NULL,
    year        INTEGER NOT NULL,
    month       INTEGER NOT NULL,
    measure     TEXT NOT NULL,
    count       INTEGER NOT NULL,
    computed_us INTEGER NOT NULL,
    PRIMARY KEY (connector, unit, year, month, measure)
);

CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_us INTEGER NOT NULL
);
