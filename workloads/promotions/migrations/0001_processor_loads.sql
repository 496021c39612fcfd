-- The promotions workload's processor state, per events partition: its part
-- of each recent generation (phase loading|ended|failed, rows copied into
-- the generation's storage), and the decisions of its switches not yet
-- announced on the generations topic. The generations' rows themselves are
-- the engine's bulk tables (promotions_g<n>, engine migration 7).
CREATE TABLE processor_promotion_loads (
    topic      TEXT   NOT NULL,
    partition  INT    NOT NULL,
    generation BIGINT NOT NULL,
    phase      TEXT   NOT NULL,
    copied     BIGINT NOT NULL,
    PRIMARY KEY (topic, partition, generation)
);
CREATE TABLE processor_promotion_announcements (
    topic        TEXT   NOT NULL,
    partition    INT    NOT NULL,
    announcement TEXT   NOT NULL,
    generation   BIGINT NOT NULL,
    state        TEXT   NOT NULL,
    rows         BIGINT NOT NULL,
    error        TEXT   NOT NULL,
    PRIMARY KEY (topic, partition, announcement)
);
