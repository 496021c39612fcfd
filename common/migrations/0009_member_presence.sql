-- A member's presence: the key of the session-level advisory lock it holds on
-- a connection of its own while it lives. PostgreSQL releases the lock the
-- moment that session ends (a kill -9 closes its socket), so the other members
-- stop counting it and take its partitions at their next heartbeat, without
-- waiting out its lease (docs/architecture.md, "Assignment"). NULL: a member
-- that predates presence, live by its heartbeat alone.
ALTER TABLE group_members ADD COLUMN IF NOT EXISTS presence_key BIGINT;
