-- Settings every service of a deployment must agree on (the horizon, the
-- partition count of the events topic). The first service to start stores
-- them; every other one compares its own and refuses to start on a mismatch,
-- so e.g. a command accepting 14 days back while the processor closes hours
-- after 7 cannot run (docs/architecture.md, "One horizon").
CREATE TABLE deployment_settings (
    name   TEXT        PRIMARY KEY,
    value  TEXT        NOT NULL,
    set_by TEXT        NOT NULL,
    set_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
