-- Findings, stored with their secret encrypted (AES-256-GCM under a data
-- key; data keys are wrapped by the master key, which never enters the
-- database).

create table secret_keys (
    id serial primary key,
    -- nonce (12 bytes) followed by the AES-256-GCM encryption of the data key under the master key
    wrapped_key bytea not null,
    state text not null default 'active' check (state in ('active', 'inactive')),
    created_at timestamptz not null default now()
);
comment on table secret_keys is 'data keys that encrypt stored secrets; exactly one is active';
create unique index secret_keys_one_active on secret_keys ((true)) where state = 'active';

create table findings (
    id bigserial primary key,
    repository_id bigint not null references repositories (id) on delete cascade,
    rule_id text not null,
    rule_name text not null,
    severity text not null,
    commit text not null,
    path text not null,
    -- null for rules that report whole files
    line integer,
    author text not null default '',
    author_email text not null default '',
    commit_date timestamptz,
    scan_date timestamptz not null default now(),
    -- keyed hash (HMAC-SHA256) of rule and secret: stable, reveals nothing without the key
    fingerprint text not null,
    -- first 4 characters and an ellipsis
    redacted text not null,
    secret_key_id integer not null references secret_keys (id),
    -- nonce (12 bytes) followed by the AES-256-GCM ciphertext of the secret
    secret_ciphertext bytea not null,
    unique (repository_id, commit, path, rule_id, fingerprint)
);
comment on table findings is 'secrets found, one per (repository, introducing commit, path, rule, secret)';

create table finding_branches (
    finding_id bigint not null references findings (id) on delete cascade,
    branch text not null,
    primary key (finding_id, branch)
);
comment on table finding_branches is 'the branches whose history contains a finding''s commit';
