-- Key rotation, and Code Insights reports and annotations.

-- when a key stopped being the active one
alter table secret_keys add column rotated_at timestamptz;

create table insight_reports (
    id bigserial primary key,
    repository_id bigint not null references repositories (id) on delete cascade,
    commit text not null,
    -- the report's key (Data Center) or external id (Cloud)
    report_key text not null,
    uuid uuid not null default gen_random_uuid() unique,
    title text not null,
    details text,
    report_type text check (report_type in ('SECURITY', 'COVERAGE', 'TEST', 'BUG')),
    result text check (result in ('PASSED', 'FAILED', 'PENDING')),
    reporter text,
    link text,
    logo_url text,
    remote_link_enabled boolean,
    -- [{title, type, value}]
    data jsonb not null default '[]',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (repository_id, commit, report_key)
);
comment on table insight_reports is 'Code Insights reports on commits: leakscan''s own SECURITY reports and other tools''';

create table insight_annotations (
    id bigserial primary key,
    report_id bigint not null references insight_reports (id) on delete cascade,
    external_id text not null,
    uuid uuid not null default gen_random_uuid() unique,
    annotation_type text not null check (annotation_type in ('VULNERABILITY', 'CODE_SMELL', 'BUG')),
    path text,
    line integer,
    summary text not null,
    details text,
    result text check (result in ('PASSED', 'FAILED', 'SKIPPED', 'IGNORED')),
    severity text check (severity in ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
    link text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (report_id, external_id)
);
comment on table insight_annotations is 'a report''s annotations, at most 1000 per report';

-- when the task's current (or last) attempt was leased: a scan's duration
alter table scan_tasks add column leased_at timestamptz;
