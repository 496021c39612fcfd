-- The analytics processor's state, as of the partition's next_offset in
-- processor_partitions (the engine's state store).

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
