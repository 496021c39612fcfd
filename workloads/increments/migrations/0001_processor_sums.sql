-- The increments workload's processor state: the exact sum of every key of a
-- partition, as of the partition's next_offset in processor_partitions.
-- NUMERIC holds any i128 sum exactly.
CREATE TABLE processor_increment_sums (
    topic     TEXT    NOT NULL,
    partition INT     NOT NULL,
    key       UUID    NOT NULL,
    sum       NUMERIC NOT NULL,
    PRIMARY KEY (topic, partition, key)
);
