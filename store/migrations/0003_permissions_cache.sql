-- Project and repository permissions, and the blob-result cache shared by
-- every worker through the coordinator.

create table project_permissions (
    user_id bigint not null references users (id) on delete cascade,
    project_id bigint not null references projects (id) on delete cascade,
    permission text not null check (permission in ('PROJECT_ADMIN', 'PROJECT_WRITE', 'PROJECT_READ')),
    primary key (user_id, project_id)
);
comment on table project_permissions is 'one grant per user and project; higher grants imply lower ones';

create table repository_permissions (
    user_id bigint not null references users (id) on delete cascade,
    repository_id bigint not null references repositories (id) on delete cascade,
    permission text not null check (permission in ('REPO_ADMIN', 'REPO_WRITE', 'REPO_READ')),
    primary key (user_id, repository_id)
);
comment on table repository_permissions is 'one grant per user and repository; higher grants imply lower ones';

create table blob_results (
    ruleset_digest text not null,
    -- git object id (20 bytes)
    blob_id bytea not null,
    -- null for a clean blob; otherwise the matches (rule, line, secret) as
    -- JSON encrypted like findings' secrets
    secret_key_id integer references secret_keys (id),
    sealed_matches bytea,
    created_at timestamptz not null default now(),
    primary key (ruleset_digest, blob_id)
);
comment on table blob_results is 'what a blob holds under a ruleset: a blob whose result is here is never read again';

-- the branch HEAD points at (Bitbucket's default branch), read at catalog sync
alter table repositories add column default_branch text;
