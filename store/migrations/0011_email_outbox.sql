-- E-mail when a job ends (issue 15): an outbox row per address, written by
-- the same transaction that ends the job (a trigger, so every way a job
-- ends is covered), and delivered by the leading coordinator.

create table email_outbox (
    id bigserial primary key,
    job_id bigint not null references scan_jobs (id) on delete cascade,
    address text not null,
    state text not null default 'pending' check (state in ('pending', 'sent', 'failed')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    sent_at timestamptz,
    created_at timestamptz not null default now(),
    unique (job_id, address)
);
comment on table email_outbox is 'job summaries to e-mail: one row per job and address, sent once by the leader';
create index email_outbox_due on email_outbox (next_attempt_at) where state = 'pending';

create function queue_job_emails() returns trigger language plpgsql as $$
begin
    insert into email_outbox (job_id, address)
    select new.id, address from unnest(new.emails) as address
    on conflict (job_id, address) do nothing;
    return new;
end
$$;

create trigger scan_jobs_ended_emails
    after update of state on scan_jobs
    for each row
    when (old.state in ('queued', 'running') and new.state in ('done', 'cancelled', 'failed')
          and cardinality(new.emails) > 0)
    execute function queue_job_emails();
