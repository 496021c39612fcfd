-- The processor's state store: a checkpoint per events partition (each
-- workload keeps its own state beside it, in its own tables).

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
