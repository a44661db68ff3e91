-- Answer feedback and the per-question signals that knowledge gaps are found from. Both hang off
-- `messages` with ON DELETE CASCADE, so the retention cleanup (which deletes messages) and a
-- deleted conversation take them along.

-- One rating per answer per user; a new rating replaces the old one.
CREATE TABLE message_feedback (
    message_id  uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rating      text NOT NULL CHECK (rating IN ('up', 'down')),
    comment     text CHECK (char_length(comment) <= 1000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);
-- The admin's list of the latest ratings.
CREATE INDEX message_feedback_updated_idx ON message_feedback (updated_at DESC);

-- What retrieval saw for each question: the question's vector (of the embedder named by
-- provider/model/dimension: vectors of different models are never compared), the best cosine
-- similarity any passage reached and its document, and whether the answer was a refusal.
CREATE TABLE question_signals (
    question_id   uuid PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    provider      text NOT NULL,
    model         text NOT NULL,
    dimension     integer NOT NULL CHECK (dimension > 0),
    -- little-endian f32 values, L2-normalised (as in embedding_cache)
    embedding     bytea NOT NULL CHECK (octet_length(embedding) = 4 * dimension),
    best_score    real,
    best_document text,
    refused       boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- The gaps report reads a recent window.
CREATE INDEX question_signals_created_idx ON question_signals (created_at DESC);
