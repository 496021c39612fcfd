-- Bulk generations' pointer lease (common::engine::store::bulk::decide): a
-- switch records the generation it replaced and when the new one becomes
-- visible (its commit plus the lease plus the clock-skew bound, PostgreSQL's
-- clock), and the lease and bound it assumed, which readers follow. A row
-- written before (visible_at NULL, lease 0) is visible at once and not held.
ALTER TABLE bulk_active
    ADD COLUMN IF NOT EXISTS previous   BIGINT,
    ADD COLUMN IF NOT EXISTS visible_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS lease_ms   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS skew_ms    BIGINT NOT NULL DEFAULT 0;
