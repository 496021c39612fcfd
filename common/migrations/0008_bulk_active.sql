-- Bulk generations (common::engine::store::bulk): the pointer readers follow.
-- Apart from the processor's bookkeeping (migration 7) so that the query,
-- which reads it, creates no processor table when it starts first.
-- The active generation of each bulk table: what readers read. Moved in the
-- checkpoint transaction that completes a generation.
CREATE TABLE bulk_active (
    bulk_table  TEXT        PRIMARY KEY,
    generation  BIGINT      NOT NULL,
    switched_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
