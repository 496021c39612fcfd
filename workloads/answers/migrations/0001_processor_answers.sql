-- The answers workload's processor state: every key of a partition of
-- answers.commands, as of the partition's next_offset in processor_partitions.
-- `live` is 1 while the key has a value, and `value` its UTF-8 bytes (empty
-- when not live): BYTEA, because TEXT cannot hold U+0000. `ids` holds the
-- key's remembered client ids and their first decisions (rules::IdMemo::encode).
CREATE TABLE processor_answers (
    topic     TEXT   NOT NULL,
    partition INT    NOT NULL,
    key       TEXT   NOT NULL,
    version   BIGINT NOT NULL,
    live      INT    NOT NULL,
    value     BYTEA  NOT NULL,
    ids       BYTEA  NOT NULL,
    PRIMARY KEY (topic, partition, key)
);
