-- The widgets read models, written by the materializer from widgets.changes,
-- readable by anyone with SQL. Each change carries the state after it of
-- every widget it touched, so every row is an absolute value guarded by
-- input_offset (the command's offset in the one decision partition plus
-- one): a row only moves to a higher one, whatever order changes arrive in,
-- and a replayed change is a no-op.

-- Every widget ever created, by serial: `body` is the GET answer
-- ({"serial","name","ports","associations"}), empty (and live 0) once deleted;
-- the Redis copy holds just it.
CREATE TABLE widgets (
    serial       TEXT        PRIMARY KEY,
    live         INT         NOT NULL,
    name         TEXT        NOT NULL,
    ports        TEXT        NOT NULL,
    at_ms        BIGINT      NOT NULL,
    body         TEXT        NOT NULL,
    input_offset BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each widget's three slots: slot i's type (`port`, '' past the widget's
-- ports) and its partner ('' when free; all '' once the widget is deleted).
CREATE TABLE widget_slots (
    serial       TEXT        NOT NULL,
    slot         INT         NOT NULL,
    port         TEXT        NOT NULL,
    partner      TEXT        NOT NULL,
    input_offset BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (serial, slot)
);

-- The associations, one row per end (so each association twice, once from each widget).
CREATE VIEW widget_associations AS
    SELECT serial, partner AS with_serial, port FROM widget_slots WHERE partner <> '';
