-- No query reads documents by unit and date (they are read by key and by patient), yet every
-- stored document paid an insert into this index: about 60 bytes and a B-tree write a record
-- in a region's backfill (issue 18, BENCHMARKS.md fifth round).
DROP INDEX IF EXISTS documents_unit_date;
