-- Policy: custom rules and allowlist rules at three scopes, built-in rule
-- switches, reviews (false positives), the audit log, and what each branch
-- scan was made under.

create table secret_rules (
    id bigserial primary key,
    kind text not null check (kind in ('rule', 'allowlist')),
    -- both null: global; project only: project scope; repository: repository scope
    project_id bigint references projects (id) on delete cascade,
    repository_id bigint references repositories (id) on delete cascade,
    name text not null,
    line_regex text,
    path_regex text,
    severity text not null default 'HIGH' check (severity in ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    check (line_regex is not null or path_regex is not null),
    check (project_id is null or repository_id is null)
);
comment on table secret_rules is 'custom rules and allowlist rules (Bitbucket Data Center secret scanning), global, per project or per repository';
create unique index secret_rules_name on secret_rules
    (kind, coalesce(project_id, 0), coalesce(repository_id, 0), lower(name));

create table builtin_rule_settings (
    rule_id text primary key,
    enabled boolean not null,
    updated_by text not null,
    updated_at timestamptz not null default now()
);
comment on table builtin_rule_settings is 'built-in rules switched on or off for the whole instance (absent: on)';

alter table findings add column secret_hash text;
comment on column findings.secret_hash is 'keyed hash (HMAC-SHA256) of the secret alone: what reviews match';
create index findings_secret_hash on findings (secret_hash);
create index findings_fingerprint on findings (fingerprint);

alter table finding_branches add column task_id bigint;
comment on column finding_branches.task_id is 'the scan task that last reported the finding on this branch';

alter table branches add column last_scanned_base text;
comment on column branches.last_scanned_digest is 'digest of the effective policy (base and the branch''s config file) of the last scan';
comment on column branches.last_scanned_base is 'digest of the base policy (built-in switches, rules and allowlists of every scope) of the last scan';

create table reviews (
    id bigserial primary key,
    -- null: a global review
    repository_id bigint references repositories (id) on delete cascade,
    secret_hash text not null,
    rule_id text not null default '',
    redacted text not null,
    comment text not null default '',
    created_by text not null,
    created_at timestamptz not null default now(),
    unique nulls not distinct (repository_id, secret_hash)
);
comment on table reviews is 'secrets marked reviewed (false positives), for one repository or globally';

create table audit_log (
    id bigserial primary key,
    at timestamptz not null default now(),
    actor text not null,
    action text not null,
    target text not null,
    details jsonb not null default '{}'
);
comment on table audit_log is 'every change to rules, allowlists, built-in switches, exemptions and reviews: who, what, when';
