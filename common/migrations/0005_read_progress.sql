-- Read-your-writes: how far each events partition is reflected in the read
-- models, per aggregates partition that carried the processor's progress
-- records. Written by the materializer in the same transaction as the rows
-- of the batch, only ever moving forward; read by the query when the
-- Redis copy is unavailable.
CREATE TABLE read_progress (
    events_topic          TEXT        NOT NULL,
    partition             INT         NOT NULL,
    aggregates_partition  INT         NOT NULL,
    aggregates_partitions INT         NOT NULL,
    next_offset           BIGINT      NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (events_topic, partition, aggregates_partition)
);
