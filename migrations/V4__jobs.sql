-- Background jobs: the mail outbox and the record of history-cleanup runs.

-- Outgoing mail, written in the same transaction as the change that causes it (signup), so a
-- committed user always has its welcome mail queued. Workers claim rows with
-- `FOR UPDATE SKIP LOCKED` and keep the row lock until the row is marked sent or rescheduled.
CREATE TABLE mail_outbox (
    id              bigserial PRIMARY KEY,
    -- What kind of mail this is ('welcome'); for metrics and the admin view.
    kind            text NOT NULL,
    -- The account the mail is about; a deleted account takes its unsent mail with it.
    user_id         uuid REFERENCES users (id) ON DELETE CASCADE,
    recipient       text NOT NULL,
    subject         text NOT NULL,
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    -- Delivery attempts made so far (failed ones included).
    attempts        integer NOT NULL DEFAULT 0,
    -- Not claimed before this time: exponential backoff after a failed attempt.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Why the last attempt failed (and, once status is 'failed', why it was given up).
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
-- The claim query scans only what is pending, oldest due first.
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX mail_outbox_user_idx ON mail_outbox (user_id);

-- One row per history-cleanup run, scheduled or manual. A row with no finished_at is a run in
-- progress (or one whose process died; the next run marks those as interrupted).
CREATE TABLE cleanup_runs (
    id                    bigserial PRIMARY KEY,
    trigger               text NOT NULL CHECK (trigger IN ('scheduled', 'manual')),
    retention_days        integer NOT NULL,
    -- Rows created before this instant were deleted.
    cutoff                timestamptz NOT NULL,
    started_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz,
    messages_deleted      bigint NOT NULL DEFAULT 0,
    conversations_deleted bigint NOT NULL DEFAULT 0,
    error                 text
);
CREATE INDEX cleanup_runs_started_idx ON cleanup_runs (started_at DESC, id DESC);
