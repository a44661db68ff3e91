-- Live chat sessions of every server instance, for the admin view across instances.
--
-- Each instance writes its own rows (off the socket's hot path, through a background writer)
-- and refreshes their seen_at on a heartbeat. Rows whose seen_at is older than the staleness
-- window belong to an instance that died without cleaning up: readers ignore them and the
-- next heartbeat of any instance deletes them. A graceful shutdown deletes its own rows.
-- Not a system of record: losing this table loses nothing but the admin view.
CREATE UNLOGGED TABLE live_sessions (
    session_id   uuid PRIMARY KEY,
    -- The server process (a random id per start) holding the socket.
    instance_id  uuid NOT NULL,
    user_id      uuid NOT NULL,
    username     text NOT NULL,
    connected_at timestamptz NOT NULL,
    remote_addr  text,
    user_agent   text,
    -- Questions asked on this connection so far.
    asks         bigint NOT NULL DEFAULT 0,
    -- Answers being generated right now.
    answering    integer NOT NULL DEFAULT 0,
    -- Last write or heartbeat of the owning instance.
    seen_at      timestamptz NOT NULL DEFAULT now()
);
-- The heartbeat refreshes and the shutdown deletes one instance's rows.
CREATE INDEX live_sessions_instance_idx ON live_sessions (instance_id);
-- Readers skip, and heartbeats delete, stale rows.
CREATE INDEX live_sessions_seen_idx ON live_sessions (seen_at);
