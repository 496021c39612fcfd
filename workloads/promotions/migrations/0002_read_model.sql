-- The promotions read model, written by the materializer from the
-- generations topic: each generation's state (loading, active, replaced,
-- failed), its rows once known (-1 before) and why it failed ('' if not).
-- A state only moves forward; its rank (loading 1, active or failed 2,
-- replaced 3) is the row's version, so replays are no-ops.
CREATE TABLE promotion_generations (
    generation BIGINT      PRIMARY KEY,
    state      TEXT        NOT NULL,
    rows       BIGINT      NOT NULL,
    error      TEXT        NOT NULL,
    rank       BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
