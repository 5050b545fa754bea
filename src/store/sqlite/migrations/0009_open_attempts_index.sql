-- Delivery reads and closes the open attempts of a key (in flight, unknown, transient) in every
-- claim and settle. Indexed over every attempt ever made, each batch's insert and update landed
-- on scattered leaf pages of an index that grows with every send: pages written to the WAL
-- (and, on SQLite, checkpointed back while the single writer waits). Over the open attempts
-- only, the index stays a few pages (issue 18, BENCHMARKS.md seventh round). A key's attempt
-- history is found through its records (attempts_record).
DROP INDEX IF EXISTS attempts_idem;
CREATE INDEX attempts_open ON attempts (idem_key) WHERE outcome IN ('in_flight', 'unknown', 'transient');
-- Expired leases are found among the records being sent (records_claim by state: at most the
-- workers' batches in flight). An index by lease time moved two entries with every claim and
-- every settle, and held every record ever queued.
DROP INDEX IF EXISTS records_lease;
