-- A finding's confidence (HIGH, MEDIUM, LOW): how sure the engine is that the
-- match is a real credential (docs/ARCHITECTURE.md, "Detection quality").
-- Rows recorded before the column existed have none and read as MEDIUM.

alter table findings add column confidence text check (confidence in ('HIGH', 'MEDIUM', 'LOW'));
comment on column findings.confidence is 'the engine''s confidence in the finding (HIGH, MEDIUM, LOW); null for rows from before confidences, reported as MEDIUM';
