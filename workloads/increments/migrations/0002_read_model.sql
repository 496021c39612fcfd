-- The increments read model, written by the materializer, readable by anyone
-- with SQL: the exact sum of each key. A key lives in exactly one events
-- partition, so the input offset of that partition orders its sums: a row
-- only ever moves to a higher input_offset, and replays are no-ops.
CREATE TABLE increments (
    key          UUID        PRIMARY KEY,
    value        NUMERIC     NOT NULL,
    partition    INT         NOT NULL,
    input_offset BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
