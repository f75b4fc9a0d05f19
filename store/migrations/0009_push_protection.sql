-- Push protection (issue 15): the pre-receive hook's setting at global,
-- project and repository scope (a repository inherits the nearest one that
-- is set), and the tokens installed hooks authenticate with.

create table hook_settings (
    -- both null: the global default; project only: a project's default;
    -- repository: that repository's own setting
    project_id bigint references projects (id) on delete cascade,
    repository_id bigint references repositories (id) on delete cascade,
    enabled boolean not null,
    mode text not null default 'block' check (mode in ('block', 'warn')),
    updated_by text not null,
    updated_at timestamptz not null default now(),
    check (project_id is null or repository_id is null),
    unique nulls not distinct (project_id, repository_id)
);
comment on table hook_settings is 'pre-receive hook on or off (and block or warn) globally, per project or per repository; the nearest scope set wins';

-- The repository's effective setting: its own, else its project's, else the
-- global one; no row when none is set (the hook is off).
create function hook_setting_of(repository bigint, project bigint)
returns table (enabled boolean, mode text, scope text)
language sql stable as $$
    select s.enabled, s.mode,
           case when s.repository_id is not null then 'REPOSITORY'
                when s.project_id is not null then 'PROJECT'
                else 'GLOBAL' end
    from hook_settings s
    where s.repository_id = repository
       or (s.repository_id is null and s.project_id = project)
       or (s.repository_id is null and s.project_id is null)
    order by s.repository_id is null, s.project_id is null
    limit 1
$$;

-- The old flag was never settable; the setting lives in hook_settings.
alter table repositories drop column hook_enabled;

create table hook_tokens (
    id bigserial primary key,
    -- null: valid for every repository (a host administrator's hook)
    repository_id bigint references repositories (id) on delete cascade,
    -- SHA-256 (hex) of the token; the token is shown or written once
    token_hash text not null unique,
    created_by text not null,
    created_at timestamptz not null default now()
);
comment on table hook_tokens is 'credentials of installed pre-receive hooks: they read a repository''s hook setting and policy and report pushes, nothing else';
