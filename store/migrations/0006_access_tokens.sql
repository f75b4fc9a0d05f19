-- Personal access tokens (Bitbucket's HTTP access tokens): a user's
-- credential for scripts, with its own, lower, permissions.

create table access_tokens (
    id bigserial primary key,
    user_id bigint not null references users (id) on delete cascade,
    name text not null,
    -- SHA-256 (hex) of the token; the token itself is shown once, never stored
    token_hash text not null unique,
    -- the token's project and repository permission
    project_permission text not null check (project_permission in ('PROJECT_READ', 'PROJECT_WRITE', 'PROJECT_ADMIN')),
    repository_permission text not null check (repository_permission in ('REPO_READ', 'REPO_WRITE', 'REPO_ADMIN')),
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    last_used_at timestamptz
);
comment on table access_tokens is 'personal access tokens: Authorization: Bearer, acting as their user with at most their permissions';
create index access_tokens_user on access_tokens (user_id, id);
