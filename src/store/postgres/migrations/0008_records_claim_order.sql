-- The claim takes the due records in (next_attempt_us, id) order. With the index on
-- (state, next_attempt_us) alone, PostgreSQL read and sorted every pending record due at the
-- same time (a backfill queues hundreds at one instant) to find the first 64: 5 ms per claim.
-- With id in the index the order is the index's and the scan stops at the batch (issue 18).
-- SQLite needs no change: its index entries end in the rowid, which is the id.
CREATE INDEX records_claim_order ON records (state, next_attempt_us, id);
DROP INDEX IF EXISTS records_claim;
