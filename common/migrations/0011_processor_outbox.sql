-- The processor's outbox: the records of each checkpoint whose Kafka
-- transaction is not known to have committed. Written in the checkpoint's
-- transaction (with the state and the position), deleted by the next
-- checkpoint once that emit committed; a claim re-sends exactly these rows,
-- which are the only records a former owner may have left out of the log.
-- One row per record key: a newer checkpoint's record replaces an older one.
CREATE TABLE processor_outbox (
    topic        TEXT   NOT NULL,
    partition    INT    NOT NULL,
    key          TEXT   NOT NULL,
    -- The input offset the record reflects: the checkpoint's next_offset.
    input_offset BIGINT NOT NULL,
    payload      BYTEA  NOT NULL,
    PRIMARY KEY (topic, partition, key)
);
-- Sketches hardly compress: store them out of line without trying.
ALTER TABLE processor_outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
