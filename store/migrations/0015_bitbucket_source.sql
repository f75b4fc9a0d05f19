-- Catalog sync from a Bitbucket Data Center (issue 18): the configured
-- server, its token (encrypted like findings' secrets, handed to git for
-- the server's own origin only) and the last sync's result.
create table catalog_sources (
    id serial primary key,
    -- the REST base URL, without a trailing slash
    base_url text not null unique,
    -- scheme://host[:port] the clone credential is given for, lower case
    origin text not null,
    secret_key_id integer not null references secret_keys (id),
    -- user:token, percent-encoded, as a git credentials line holds it
    secret_ciphertext bytea not null,
    last_started_at timestamptz,
    last_finished_at timestamptz,
    -- 'ok' or 'failed'
    last_status text check (last_status in ('ok', 'failed')),
    last_error text,
    last_result jsonb
);
comment on table catalog_sources is 'Bitbucket servers the catalog is synchronised from, their encrypted clone credential and the last sync';

-- A synchronised repository remembers its server and Bitbucket's own id,
-- which stays the same across renames and moves; a repository the server
-- no longer lists is marked deleted and keeps its findings.
alter table repositories
    add column source_id integer references catalog_sources (id) on delete set null,
    add column external_id bigint,
    add column deleted_at timestamptz;
create unique index repositories_external on repositories (source_id, external_id)
    where source_id is not null;
