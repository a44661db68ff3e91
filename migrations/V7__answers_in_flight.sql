-- Answers being generated, and the server processes generating them, so that an answer whose
-- process died (kill -9, a crash, SIGTERM past the grace period) is marked `error` with the code
-- `interrupted` instead of staying "being written" forever.
--
-- Every server process registers itself in `instances` at start and refreshes `seen_at` on its
-- heartbeat. A question that is stored gets a row in `answers_in_flight` in the same
-- transaction, naming the process answering it; storing the answer deletes that row in the same
-- statement. Rows of a process whose heartbeat is older than the staleness window are turned
-- into `interrupted` answers by any live process (at start, on its heartbeat and with the
-- scheduled cleanup).

CREATE TABLE instances (
    -- A random id per process start.
    instance_id uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_seen_idx ON instances (seen_at);

CREATE TABLE answers_in_flight (
    question_id uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    -- The process generating the answer (not a foreign key: its row may be swept first).
    instance_id uuid NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX answers_in_flight_instance_idx ON answers_in_flight (instance_id);

-- Questions left without an answer before this migration belong to processes that are gone:
-- the nil instance never beats, so the first sweep marks them interrupted.
INSERT INTO answers_in_flight (question_id, instance_id, started_at)
SELECT q.id, '00000000-0000-0000-0000-000000000000', q.created_at
FROM messages q
WHERE q.role = 'user'
  AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.reply_to = q.id);
