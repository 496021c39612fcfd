-- The widgets workload's processor state: the graph of the shard's partition
-- of widgets.commands, as of the partition's next_offset in
-- processor_partitions. One row per live widget, slot by slot: slot<i> holds
-- the partner's serial in slot i (of type ports[i]), '' when free or past the
-- widget's ports. A checkpoint writes only the widgets changed since the last.
CREATE TABLE processor_widgets (
    topic     TEXT NOT NULL,
    partition INT  NOT NULL,
    serial    TEXT NOT NULL,
    name      TEXT NOT NULL,
    ports     TEXT NOT NULL,
    slot0     TEXT NOT NULL,
    slot1     TEXT NOT NULL,
    slot2     TEXT NOT NULL,
    PRIMARY KEY (topic, partition, serial)
);

-- The client ids the shard remembers (key '<id>:<serial>') with their first
-- decision: outcome 1 created, 2 deleted, 3 associated, 4 dissociated,
-- 5 not found, 6 conflict (with its reason); at_ms is the partition's
-- watermark then, command_offset the command's offset (the memo's order).
CREATE TABLE processor_widget_ids (
    topic          TEXT   NOT NULL,
    partition      INT    NOT NULL,
    key            TEXT   NOT NULL,
    outcome        INT    NOT NULL,
    reason         TEXT   NOT NULL,
    at_ms          BIGINT NOT NULL,
    command_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition, key)
);
