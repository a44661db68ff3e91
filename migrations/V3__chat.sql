-- Conversations and their messages: every question and every answer, kept until the retention
-- cleanup (which deletes by `created_at` on both tables) removes them.

CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The first question, shortened.
    title       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Keyset pagination of a user's conversations, newest first.
CREATE INDEX conversations_user_created_idx ON conversations (user_id, created_at DESC, id DESC);
-- Retention cleanup.
CREATE INDEX conversations_created_idx ON conversations (created_at);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- Denormalised from the conversation so a user's history pages without a join.
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role              text NOT NULL CHECK (role IN ('user', 'assistant')),
    -- On an answer: the question it answers (an answer goes when its question goes).
    reply_to          uuid REFERENCES messages (id) ON DELETE CASCADE,
    content           text NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'complete', 'cancelled', 'error')),
    sources           jsonb NOT NULL DEFAULT '[]'::jsonb,
    prompt_tokens     integer,
    completion_tokens integer,
    total_tokens      integer,
    -- Milliseconds from the question to the first delta, and to the end of the answer.
    first_token_ms    integer,
    latency_ms        integer,
    -- Stable error code when status = 'error'.
    error_code        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'assistant') = (reply_to IS NOT NULL))
);
-- Keyset pagination of a user's questions (the chat history), newest first.
CREATE INDEX messages_user_questions_idx ON messages (user_id, created_at DESC, id DESC)
    WHERE role = 'user';
-- A conversation's messages in order, and its recent turns for the prompt.
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at DESC, id DESC);
-- One answer per question; also the join from a question to its answer.
CREATE UNIQUE INDEX messages_reply_to_key ON messages (reply_to) WHERE reply_to IS NOT NULL;
-- Retention cleanup.
CREATE INDEX messages_created_idx ON messages (created_at);
