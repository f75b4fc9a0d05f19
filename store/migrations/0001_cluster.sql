-- The scan cluster's core: users, the repository catalog, scan jobs and
-- their branch tasks. Findings, rules and keys come in later migrations.

create table users (
    id bigserial primary key,
    name text not null unique,
    display_name text not null,
    email text not null default '',
    -- argon2id PHC string
    password_hash text not null,
    created_at timestamptz not null default now()
);
comment on table users is 'people and service accounts that call the REST API (basic auth)';

create table global_permissions (
    user_id bigint not null references users (id) on delete cascade,
    permission text not null check (permission in ('SYS_ADMIN', 'SECURITY')),
    primary key (user_id, permission)
);
comment on table global_permissions is 'instance-wide grants: system administrator and the explicit security grant';

create table projects (
    id bigserial primary key,
    key text not null unique,
    name text not null,
    -- set for personal projects (~user)
    owner_user_id bigint references users (id) on delete cascade,
    created_at timestamptz not null default now()
);
comment on table projects is 'Bitbucket projects; personal projects have keys starting with ~';

create table repositories (
    id bigserial primary key,
    project_id bigint not null references projects (id) on delete cascade,
    slug text not null,
    name text not null,
    -- a local path or an http(s) URL
    clone_url text not null,
    hook_enabled boolean not null default false,
    exempt boolean not null default false,
    created_at timestamptz not null default now(),
    unique (project_id, slug)
);
comment on table repositories is 'repositories of the catalog, found under the configured roots or registered through the API';

create table branches (
    repository_id bigint not null references repositories (id) on delete cascade,
    name text not null,
    head_commit text not null,
    last_scanned_commit text,
    last_scanned_digest text,
    last_scanned_at timestamptz,
    primary key (repository_id, name)
);
comment on table branches is 'branches of each repository with what the last completed scan covered';

create table scan_jobs (
    id bigserial primary key,
    scan_key text not null unique,
    scope text not null check (scope in ('total', 'project', 'repository', 'branch')),
    project_key text,
    repository_slug text,
    branch text,
    requested_by text not null,
    emails text[] not null default '{}',
    state text not null default 'queued' check (state in ('queued', 'running', 'done', 'cancelled', 'failed')),
    tasks_total integer not null default 0,
    tasks_done integer not null default 0,
    blobs_read bigint not null default 0,
    error text,
    created_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz
);
comment on table scan_jobs is 'one scan request (total, project, repository or branch rescan); the source of truth the Redis stream only points at';
create index scan_jobs_state on scan_jobs (state, id);

create table scan_tasks (
    id bigserial primary key,
    job_id bigint not null references scan_jobs (id) on delete cascade,
    repository_id bigint not null references repositories (id) on delete cascade,
    branch text not null,
    state text not null default 'queued' check (state in ('queued', 'leased', 'done', 'failed', 'cancelled')),
    attempts integer not null default 0,
    lease_id text,
    leased_by text,
    lease_expires_at timestamptz,
    last_error text,
    commits_total bigint not null default 0,
    commits_done bigint not null default 0,
    blobs_read bigint not null default 0,
    head_commit text,
    created_at timestamptz not null default now(),
    finished_at timestamptz,
    unique (job_id, repository_id, branch)
);
comment on table scan_tasks is 'one branch of one repository within a job, leased to a worker with an expiry';
create index scan_tasks_queued on scan_tasks (id) where state = 'queued';
create index scan_tasks_leased on scan_tasks (lease_expires_at) where state = 'leased';
