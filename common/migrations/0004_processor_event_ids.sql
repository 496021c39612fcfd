-- Client event ids the processor has counted, per open hour of a partition,
-- for deduplication: chunks of 8-byte little-endian hashes of (user, id),
-- appended per checkpoint together with the counts and the position, merged
-- when an hour has many, dropped when the hour closes.
CREATE TABLE processor_id_chunks (
    topic         TEXT      NOT NULL,
    partition     INT       NOT NULL,
    hour_start_ms BIGINT    NOT NULL,
    seq           BIGSERIAL NOT NULL,
    ids           BYTEA     NOT NULL,
    PRIMARY KEY (topic, partition, hour_start_ms, seq)
);
