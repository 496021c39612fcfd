-- The processor's outbox: the records of each checkpoint whose Kafka
-- transaction is not known to have committed. Written in the checkpoint's
-- transaction (with the state and the position), deleted by the next
-- checkpoint once that emit committed; a claim re-sends exactly these rows,
-- which are the only records a former owner may have left out of the log.
-- One row per record key: a newer checkpoint's record replaces an older one.
-- The bytes are kept only for a record the state cannot render again (a
-- closed hour's final record); for the others (open hours, increment sums)
-- the key is enough: the claim renders them from the restored state, which is
-- at least as new.
CREATE TABLE processor_outbox (
    topic        TEXT   NOT NULL,
    partition    INT    NOT NULL,
    key          TEXT   NOT NULL,
    -- The input offset the record reflects: the checkpoint's next_offset.
    input_offset BIGINT NOT NULL,
    payload      BYTEA,
    PRIMARY KEY (topic, partition, key)
);
-- Sketches hardly compress: store them out of line without trying.
ALTER TABLE processor_outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
