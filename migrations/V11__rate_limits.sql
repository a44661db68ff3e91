-- Fixed-window counters shared by every instance: signups per client address, login failures
-- per (username, address) and per address. One row per key and window; a hit is one upsert,
-- so checking and counting are a single atomic statement (parallel requests cannot slip past
-- the limit together). The scheduled cleanup deletes windows that have ended.
CREATE TABLE rate_limits (
    key        text        NOT NULL,
    window_end timestamptz NOT NULL,
    hits       integer     NOT NULL,
    PRIMARY KEY (key, window_end)
);
CREATE INDEX rate_limits_window_end_idx ON rate_limits (window_end);

-- Login failures are counted in rate_limits now (per username and address, and per address).
DROP TABLE login_failures;
