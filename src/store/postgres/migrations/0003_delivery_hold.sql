-- Issue 17 (delivery hardening).
-- A withdrawal made by a person holds its key until a person lifts it (who, why, since).
ALTER TABLE registrations ADD COLUMN held_by TEXT;
ALTER TABLE registrations ADD COLUMN held_reason TEXT;
ALTER TABLE registrations ADD COLUMN held_us BIGINT;
-- Claim takes only the newest version of a key: "is there a newer version?" per candidate.
CREATE INDEX records_idem_version ON records (idem_key, version);
