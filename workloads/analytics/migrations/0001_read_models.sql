-- Read models written by the materializer.

-- The latest absolute counts per (hour, events partition). A row only ever
-- moves to a higher input_offset, so replayed aggregates are no-ops.
CREATE TABLE hourly_partition_aggregates (
    hour_start_ms BIGINT      NOT NULL,
    partition     INT         NOT NULL,
    unique_users  BIGINT      NOT NULL,
    clicks        BIGINT      NOT NULL,
    impressions   BIGINT      NOT NULL,
    input_offset  BIGINT      NOT NULL,
    watermark_ms  BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (hour_start_ms, partition)
);

-- One row per hour: the sum over partitions. `version` grows by one on every
-- change and guards the Redis copy against stale overwrites. Kept for ever.
CREATE TABLE hourly_aggregates (
    hour_start_ms BIGINT      PRIMARY KEY,
    unique_users  BIGINT      NOT NULL,
    clicks        BIGINT      NOT NULL,
    impressions   BIGINT      NOT NULL,
    version       BIGINT      NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
