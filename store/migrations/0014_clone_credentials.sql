-- Credentials that clone URLs registered before issue 13 carried in their
-- user information (https://user:token@host/...). They are moved out of
-- the URL into this table, encrypted like findings' secrets, and handed to
-- the worker that clones the repository, for that URL's origin only.
create table clone_credentials (
    repository_id bigint primary key references repositories (id) on delete cascade,
    -- scheme://host[:port] the credential was given for, lower case
    origin text not null,
    secret_key_id integer not null references secret_keys (id),
    -- the URL's user information (user:password, percent-encoded as it was)
    secret_ciphertext bytea not null,
    moved_at timestamptz not null default now()
);
comment on table clone_credentials is 'credentials moved out of old clone URLs, encrypted; given to git for the same origin only';
