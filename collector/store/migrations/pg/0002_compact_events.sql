-- The district store on PostgreSQL, version 2: a compact event row (docs/benchmarks.md,
-- "Issue 11: PostgreSQL disk per event"). Stored in `event_rows`; `events` becomes a view
-- with exactly the columns of version 1 (the public contract: collector/README.md).
--
-- event_rows: id is the ULID's 128 bits as a uuid (uuid order = ULID order, the first
-- 48 bits are the mint time), partitioned by RANGE on id, one partition per UTC day of
-- mint time: `PRIMARY KEY (id)` contains the partition key, so the id alone is unique
-- (no `event_ids` table). The hierarchy is a `places` row; `source` is rebuilt; epoch is
-- the 64 bits as a bigint; `data` is the JSON text as received (refused when jsonb would
-- refuse it, so the view can always read it); `tx` is the inserting transaction's id
-- (xid8 as bigint) for a commit-safe read order (docs/architecture.md).

-- ULID text <-> uuid (the same 128 bits; collector/store/pg_keys.py does it in Python).
CREATE FUNCTION ulid_uuid(ulid text) RETURNS uuid LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT string_agg(to_hex(substr(b.bits, 4 * j + 1, 4)::bit(4)::int), '' ORDER BY j)::uuid
  FROM (SELECT substr(string_agg(((strpos('0123456789ABCDEFGHJKMNPQRSTVWXYZ',
                                          substr(upper(ulid), i, 1)) - 1)::bit(5))::text,
                                 '' ORDER BY i), 3) AS bits
        FROM generate_series(1, 26) AS i) AS b, generate_series(0, 31) AS j
$$;

CREATE FUNCTION ulid_text(id uuid) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
  SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ',
                           substring(b.bits FROM 5 * i + 1 FOR 5)::int + 1, 1), '' ORDER BY i)
  FROM (SELECT B'00' || ('x' || replace(id::text, '-', ''))::bit(128) AS bits) AS b,
       generate_series(0, 25) AS i
$$;

-- One row per place a gateway reports from; never deleted (a few thousand rows).
CREATE TABLE places (
    id        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district  text NOT NULL,
    street    text NOT NULL,
    community text NOT NULL,
    gateway   text NOT NULL,
    UNIQUE (gateway, district, street, community)
);
INSERT INTO places (district, street, community, gateway)
SELECT DISTINCT district, street, community, gateway FROM events ORDER BY 1, 2, 3, 4;

-- Columns by alignment (fixed 8-byte ones first): no padding inside the row.
CREATE TABLE event_rows (
    id          uuid        NOT NULL,
    tx          bigint      NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    epoch       bigint      NOT NULL,
    seq         bigint      NOT NULL,
    place       integer     NOT NULL,
    type        text        NOT NULL,
    device      text        NOT NULL,
    severity    text        NOT NULL,
    data        text        NOT NULL CHECK (data::jsonb IS NOT NULL),
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

-- Ids whose day has no partition (far past or future): a safety net, never dropped.
CREATE TABLE event_rows_default PARTITION OF event_rows DEFAULT;

-- The days version 1 had partitions for get theirs (by the id's mint day).
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN
        SELECT to_date(substr(c.relname, 9), 'YYYYMMDD')
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{8}$'
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF event_rows FOR VALUES FROM (%L) TO (%L)',
                       'event_rows_p' || to_char(day, 'YYYYMMDD'),
                       (lpad(to_hex((extract(epoch FROM day::timestamp) * 1000)::bigint), 12, '0')
                        || repeat('0', 20))::uuid,
                       (lpad(to_hex((extract(epoch FROM (day + 1)::timestamp) * 1000)::bigint),
                             12, '0') || repeat('0', 20))::uuid);
    END LOOP;
END
$$;

INSERT INTO event_rows (id, time, received_at, epoch, seq, place, type, device, severity, data)
SELECT ulid_uuid(e.id), e.time, e.received_at, ('x' || e.epoch)::bit(64)::bigint, e.seq, p.id,
       e.type, e.device, e.severity, e.data::text
FROM events e JOIN places p USING (district, street, community, gateway);

DROP TABLE events;
DROP TABLE event_ids;

-- A gateway's stream by seq (watermarks, gaps, duplicates) and any area's events.
CREATE INDEX idx_event_rows_place_epoch_seq ON event_rows (place, epoch, seq);
-- Insertion order follows these: block ranges, a few bytes per thousand rows.
CREATE INDEX idx_event_rows_tx ON event_rows USING brin (tx);
CREATE INDEX idx_event_rows_time ON event_rows USING brin (time);

-- The public contract: the columns of version 1, in their order and types.
CREATE VIEW events AS
SELECT ulid_text(e.id) AS id, e.type,
       '/' || p.district || '/' || p.street || '/' || p.community || '/' || p.gateway
           || '/' || e.device AS source,
       p.district, p.street, p.community, p.gateway, e.device, e.time, e.received_at,
       lpad(to_hex(e.epoch), 16, '0') AS epoch, e.seq, e.severity, e.data::jsonb AS data
FROM event_rows e JOIN places p ON p.id = e.place;
