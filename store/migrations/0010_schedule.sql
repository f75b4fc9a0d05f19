-- Scheduled total rescans (issue 15): one cron expression (UTC) for the
-- instance, and one row per occurrence the leader acted on, so an
-- occurrence starts at most one rescan whichever coordinator leads.

create table scan_schedule (
    id integer primary key default 1 check (id = 1),
    cron text not null,
    updated_by text not null,
    updated_at timestamptz not null default now()
);
comment on table scan_schedule is 'the cron expression (UTC) of scheduled total rescans; absent: none';

create table scheduled_runs (
    occurrence timestamptz primary key,
    cron text not null,
    -- null when skipped: the previous scheduled rescan still ran
    job_id bigint references scan_jobs (id) on delete set null,
    skipped boolean not null default false,
    created_at timestamptz not null default now()
);
comment on table scheduled_runs is 'each occurrence of the schedule the leader handled: the total rescan it started, or skipped';
