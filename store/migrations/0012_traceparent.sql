-- The W3C traceparent of the request that created a job (issue 16), so the
-- lease of each of its tasks, which comes later, joins the same trace.
-- Null when tracing is off.
alter table scan_jobs add column traceparent text;
