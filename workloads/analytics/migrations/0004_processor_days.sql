-- The processor's exact user set of each open UTC day of a partition, as
-- chunks of 8-byte little-endian hashes, appended per checkpoint like
-- processor_user_chunks. The chunk helpers key every chunk table by
-- `hour_start_ms`: here it holds the first millisecond of the day.
CREATE TABLE processor_day_user_chunks (
    topic         TEXT      NOT NULL,
    partition     INT       NOT NULL,
    hour_start_ms BIGINT    NOT NULL,
    seq           BIGSERIAL NOT NULL,
    users         BYTEA     NOT NULL,
    PRIMARY KEY (topic, partition, hour_start_ms, seq)
);
