-- Read models of time ranges, written by the materializer, read by the query.
-- Kept for ever, like hourly_aggregates.

-- The latest HyperLogLog sketch (common/src/analytics/sketch.rs, byte format
-- 1) of the users of each (hour, events partition). Like the partition rows
-- of hourly_partition_aggregates, a row only ever moves to a higher
-- input_offset, so replayed aggregates are no-ops. Stored uncompressed and
-- out of line: a sketch is near-random bytes (up to 49,155 of them).
CREATE TABLE hourly_partition_sketches (
    hour_start_ms BIGINT      NOT NULL,
    partition     INT         NOT NULL,
    sketch        BYTEA       NOT NULL,
    input_offset  BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (hour_start_ms, partition)
);
ALTER TABLE hourly_partition_sketches ALTER COLUMN sketch SET STORAGE EXTERNAL;

-- The exact distinct users of each (UTC day, events partition), offset-guarded.
CREATE TABLE daily_partition_aggregates (
    day_start_ms  BIGINT      NOT NULL,
    partition     INT         NOT NULL,
    unique_users  BIGINT      NOT NULL,
    input_offset  BIGINT      NOT NULL,
    watermark_ms  BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (day_start_ms, partition)
);

-- One row per UTC day: the distinct users summed over partitions (users are
-- partitioned by key, so the sum is exact). Clicks and impressions of a day
-- are the sums of its hours in hourly_aggregates. `version` grows by one on
-- every change.
CREATE TABLE daily_aggregates (
    day_start_ms  BIGINT      PRIMARY KEY,
    unique_users  BIGINT      NOT NULL,
    version       BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
