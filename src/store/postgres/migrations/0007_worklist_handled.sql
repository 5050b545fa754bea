-- Issue 19, item 5: a clinic may mark a worklist item "handled outside the system" (a reason
-- required, audited as worklist.handled). The item leaves the open worklist but stays in the
-- table, findable with a filter; the store keeps the mark while the item's missing data and
-- visit date are unchanged, so the next run does not bring it back (see Store::apply).
ALTER TABLE worklist ADD COLUMN handled_us BIGINT;
ALTER TABLE worklist ADD COLUMN handled_by TEXT;
ALTER TABLE worklist ADD COLUMN handled_reason TEXT;
