-- Version 4: consumers of the stream API (collector/consumers), the tables of
-- collector/store/schema.py CONSUMER_TABLES with timestamptz times.
-- (Numbered 4: version 3 belongs to the stream API's own migration.)

CREATE TABLE consumers (
    name        text        PRIMARY KEY,
    areas       text        NOT NULL,   -- space-separated codes; '' = every area
    types       text        NOT NULL,   -- space-separated patterns: gate.access smoke.* *
    created_at  timestamptz NOT NULL
);

-- Tokens are stored as their SHA-256 only; `hash` is the one lookup of authenticate.
CREATE TABLE consumer_tokens (
    id           text        PRIMARY KEY,
    consumer     text        NOT NULL REFERENCES consumers (name) ON DELETE CASCADE,
    hash         text        NOT NULL,
    hint         text        NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE UNIQUE INDEX idx_consumer_tokens_hash ON consumer_tokens (hash);
CREATE INDEX idx_consumer_tokens_consumer ON consumer_tokens (consumer);

-- One row per read; rows older than audit_retention_days are deleted.
CREATE TABLE consumer_audit (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL,
    consumer  text        NOT NULL,
    route     text        NOT NULL,
    scope     text        NOT NULL,
    events    integer     NOT NULL
);
CREATE INDEX idx_consumer_audit_at ON consumer_audit (at);
CREATE INDEX idx_consumer_audit_consumer_at ON consumer_audit (consumer, at);
