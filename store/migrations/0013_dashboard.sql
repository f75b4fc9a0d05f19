-- The dashboard page (issue 16): a browser signs in once and then carries
-- a session cookie (EventSource cannot send an Authorization header). Only
-- a SHA-256 of each session token is stored, as for access tokens.
create table web_sessions (
    token_hash text primary key,
    user_id bigint not null references users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index web_sessions_expiry on web_sessions (expires_at);
comment on table web_sessions is 'dashboard sign-ins: the session cookie''s hash, its user and when it ends';

-- A branch's newest task (Scanning and Failed on the dashboard).
create index scan_tasks_branch_newest on scan_tasks (repository_id, branch, id desc);

-- What the pre-receive hook reported of each push it judged, for the
-- dashboard's blocked and bypassed counts (never a secret: a result only).
create table hook_reports (
    id bigserial primary key,
    repository_id bigint not null references repositories (id) on delete cascade,
    result text not null check (result in ('blocked', 'warned', 'bypassed', 'reviewed', 'over_budget')),
    created_at timestamptz not null default now()
);
create index hook_reports_repository on hook_reports (repository_id, result);
comment on table hook_reports is 'one row per push report of the pre-receive hook: blocked, warned, bypassed, reviewed or over budget';
