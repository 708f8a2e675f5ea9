-- The district store on PostgreSQL, version 1: the tables of collector/store/schema.py.
-- `events` is the public contract (same columns and order as on SQLite; `time` and
-- `received_at` are timestamptz, `data` jsonb), partitioned by day on `time`.

CREATE TABLE events (
    id          text        NOT NULL,
    type        text        NOT NULL,
    source      text        NOT NULL,
    district    text        NOT NULL,
    street      text        NOT NULL,
    community   text        NOT NULL,
    gateway     text        NOT NULL,
    device      text        NOT NULL,
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    epoch       text        NOT NULL,
    seq         bigint      NOT NULL,
    severity    text        NOT NULL,
    data        jsonb       NOT NULL,
    PRIMARY KEY (id, time)
) PARTITION BY RANGE (time);

-- Events whose day has no partition (far past or future): a safety net, never dropped.
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE INDEX idx_events_gateway_epoch_seq ON events (gateway, epoch, seq);
CREATE INDEX idx_events_type_time ON events (type, time);
CREATE INDEX idx_events_received_at ON events (received_at);

-- One row per stored event id, unpartitioned: the primary key of a partitioned table must
-- include `time`, so only this table makes an id unique across partitions. A resend with
-- the same id (whatever its time) finds it here; `time` says which partition holds it.
-- Rows leave with their partition (retention).
CREATE TABLE event_ids (
    id   text        PRIMARY KEY,
    time timestamptz NOT NULL
);
CREATE INDEX idx_event_ids_time ON event_ids (time);

CREATE TABLE streams (
    gateway            text   NOT NULL,
    epoch              text   NOT NULL,
    first_seen         text   NOT NULL,
    last_seen          text   NOT NULL,
    high_seq           bigint NOT NULL,
    received           bigint NOT NULL,
    contiguous_through bigint NOT NULL,
    PRIMARY KEY (gateway, epoch)
);

CREATE TABLE explained_gaps (
    gateway  text   NOT NULL,
    epoch    text   NOT NULL,
    from_seq bigint NOT NULL,
    to_seq   bigint NOT NULL,
    reason   text,
    event_id text   NOT NULL,
    PRIMARY KEY (event_id, from_seq)
);
CREATE INDEX idx_explained_gaps_gateway_epoch ON explained_gaps (gateway, epoch);

CREATE TABLE quarantine (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at        text   NOT NULL,
    topic              text   NOT NULL,
    gateway_from_topic text,
    reason             text   NOT NULL,
    raw                bytea  NOT NULL,
    raw_size           bigint NOT NULL,
    event_id           text
);
CREATE INDEX idx_quarantine_received_at ON quarantine (received_at);
CREATE INDEX idx_quarantine_gateway_from_topic_raw_size ON quarantine (gateway_from_topic, raw_size);

CREATE TABLE quarantine_dropped (
    gateway  text   NOT NULL,
    cause    text   NOT NULL,
    rows     bigint NOT NULL,
    bytes    bigint NOT NULL,
    first_at text   NOT NULL,
    last_at  text   NOT NULL,
    PRIMARY KEY (gateway, cause)
);
