-- Partition assignment, coordinated through PostgreSQL rather than the
-- broker's group coordinator (see docs/architecture.md, "Assignment").

-- Live instances of each group; a member is alive while it heartbeats.
CREATE TABLE group_members (
    group_name   TEXT        NOT NULL,
    member_id    TEXT        NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, member_id)
);

-- Who may consume each partition, until when. Taken over only when released
-- or expired; correctness never depends on it (fencing epochs and offset
-- guards do that), only liveness and balance.
CREATE TABLE partition_leases (
    group_name  TEXT        NOT NULL,
    partition   INT         NOT NULL,
    owner       TEXT,
    lease_until TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, partition)
);

-- Consumer positions of groups whose sink is PostgreSQL (the materializer).
CREATE TABLE consumer_offsets (
    group_name  TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    partition   INT    NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (group_name, topic, partition)
);
