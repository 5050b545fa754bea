-- Users limited to their own care units (issue 17 item 9, issue 19 item 2): the HSA ids the user
-- may see, comma-separated; empty = the whole region. A unit-limited user sees only these units'
-- rows on every page and API endpoint, and none of the region-wide pages.
-- Written once for SQLite and PostgreSQL alike (the same text is in the other backend's folder).
ALTER TABLE users ADD COLUMN units TEXT NOT NULL DEFAULT '';
