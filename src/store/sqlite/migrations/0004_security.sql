-- Security hardening (issue 17).

-- Payloads are bound to their rows (AES-GCM associated data, `v2`). A store that holds no
-- payload yet has nothing unbound, so it refuses unbound (`v1`) ciphertexts from the start;
-- an existing store does so once `registerbrygga keys rotate` has rewritten every payload.
INSERT INTO kv (key, value, updated_us)
SELECT 'crypto.payloads_bound', '1', 0
WHERE NOT EXISTS (SELECT 1 FROM documents)
  AND NOT EXISTS (SELECT 1 FROM records)
  AND NOT EXISTS (SELECT 1 FROM registrations WHERE delivered_payload IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM quarantine WHERE raw IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM worklist)
  AND NOT EXISTS (SELECT 1 FROM pvk_results WHERE patient_list IS NOT NULL);

-- API tokens expire; tokens made before expiry existed get the default 90 days from now.
ALTER TABLE api_tokens ADD COLUMN expires_us INTEGER NOT NULL DEFAULT 0;
UPDATE api_tokens SET expires_us = CAST(strftime('%s', 'now') AS INTEGER) * 1000000 + 90 * 86400 * 1000000;

-- Sessions end after a period without use (admin.session_idle_minutes).
ALTER TABLE sessions ADD COLUMN last_seen_us INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET last_seen_us = created_us;

-- PDL access log: the patients (pseudonyms) each view of identities showed, written in the same
-- transaction as its audit event; answers "who has seen patient X?".
CREATE TABLE audit_patient_views (
    seq         INTEGER NOT NULL,
    patient_key TEXT NOT NULL,
    PRIMARY KEY (patient_key, seq)
);
