-- The processor's state store: a checkpoint per events partition.

-- Position and fencing epoch of each partition's state. A checkpoint commits
-- only if the epoch is still the writer's own: an instance that lost the
-- partition (a zombie) can no longer write.
CREATE TABLE processor_partitions (
    topic        TEXT        NOT NULL,
    partition    INT         NOT NULL,
    epoch        BIGINT      NOT NULL,
    next_offset  BIGINT      NOT NULL,
    watermark_ms BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Counts of each open hour of a partition, as of next_offset.
CREATE TABLE processor_hours (
    topic         TEXT   NOT NULL,
    partition     INT    NOT NULL,
    hour_start_ms BIGINT NOT NULL,
    clicks        BIGINT NOT NULL,
    impressions   BIGINT NOT NULL,
    unique_users  BIGINT NOT NULL,
    PRIMARY KEY (topic, partition, hour_start_ms)
);

-- The user set of each open hour, as chunks of 8-byte little-endian hashes.
-- Each checkpoint appends the users first seen since the previous one, so
-- every hash is stored once; chunks are merged when an hour has many.
CREATE TABLE processor_user_chunks (
    topic         TEXT      NOT NULL,
    partition     INT       NOT NULL,
    hour_start_ms BIGINT    NOT NULL,
    seq           BIGSERIAL NOT NULL,
    users         BYTEA     NOT NULL,
    PRIMARY KEY (topic, partition, hour_start_ms, seq)
);
