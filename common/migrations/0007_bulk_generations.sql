-- Bulk generations (common::engine::store::bulk): immutable sets of rows a
-- processor workload loads in bulk, one table per generation (`<table>_g<n>`,
-- created by the engine), made visible by moving one pointer (bulk_active,
-- migration 8, which the query applies too).
--
-- Every generation the processor has begun storing, locked (SELECT … FOR
-- UPDATE) by each partition's report so that the last two partitions to
-- report cannot both miss the other.
CREATE TABLE processor_bulk_generations (
    bulk_table TEXT        NOT NULL,
    generation BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bulk_table, generation)
);
-- What each events partition reported of a generation: the rows it loaded.
CREATE TABLE processor_bulk_reports (
    bulk_table TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    partition  INT    NOT NULL,
    rows       BIGINT NOT NULL,
    PRIMARY KEY (bulk_table, generation, partition)
);
