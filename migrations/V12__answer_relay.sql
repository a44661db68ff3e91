-- Recent answers of every instance, so a socket that reconnects to any instance can resume an
-- answer in progress or just finished (the resume window).
--
-- The instance generating an answer asked on a socket writes one `answer_streams` row when the
-- answer starts (before any of it is sent), then appends its events (sources, deltas with their
-- `seq`, the end) to `answer_events` in batches (about every 50 ms, one statement per batch,
-- never one per chunk); the batch with the end also sets `finished_at`. A resuming instance
-- reads `answer_events` from its cursor (`pos`) on. Rows are deleted by any instance's relay
-- sweep once finished longer than the resume window (or, for an answer whose instance died,
-- once older than an hour). UNLOGGED: losing it in a database crash loses only resumability.
CREATE UNLOGGED TABLE answer_streams (
    stream_id   uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    -- The client's ask id (unique per user only while an answer with it is being generated).
    ask_id      text NOT NULL,
    -- The process generating it (see `instances` for whether it is alive).
    instance_id uuid NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- A resume finds the user's latest answer with an ask id.
CREATE INDEX answer_streams_ask_idx ON answer_streams (user_id, ask_id, started_at DESC);
CREATE INDEX answer_streams_finished_idx ON answer_streams (finished_at);
CREATE INDEX answer_streams_started_idx ON answer_streams (started_at);

CREATE UNLOGGED TABLE answer_events (
    stream_id uuid    NOT NULL REFERENCES answer_streams (stream_id) ON DELETE CASCADE,
    -- The event's index in the answer's log, from 0.
    pos       integer NOT NULL,
    -- The event as JSON (the server's own `LogEvent` shape).
    event     text    NOT NULL,
    PRIMARY KEY (stream_id, pos)
);
