-- The answers read models, written by the materializer from answers.changes,
-- readable by anyone with SQL. Values are the UTF-8 bytes as BYTEA: TEXT
-- cannot hold U+0000, which a value may contain.

-- Every change of every key, written once: (key, version) is unique, and a
-- replayed change is the same row (input_offset guards the upsert). The
-- primary key is also the index GET /answers/{key}/history pages through.
CREATE TABLE answers_history (
    key          TEXT        NOT NULL,
    version      BIGINT      NOT NULL,
    event        TEXT        NOT NULL CHECK (event IN ('create', 'update', 'delete')),
    -- A delete's value is the value it removed.
    value        BYTEA       NOT NULL,
    at_ms        BIGINT      NOT NULL,
    input_offset BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key, version)
);

-- The latest state of each key: a row only moves to a higher version.
-- `body` is the GET answer, `{"key","value","version"}` in JSON (where U+0000
-- is an escape, so TEXT holds it), empty while the key is deleted; the Redis
-- copy holds just it.
CREATE TABLE answers_latest (
    key        TEXT        PRIMARY KEY,
    live       INT         NOT NULL,
    value      BYTEA       NOT NULL,
    at_ms      BIGINT      NOT NULL,
    body       TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
