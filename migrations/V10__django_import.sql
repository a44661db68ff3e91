-- Moving from the Django prototype: what `chat-server import-django` copied, and the integer
-- history ids its clients read.

-- Django users and history rows already imported, by their Django ids, so a second run imports
-- nothing twice. No foreign keys on purpose: the record outlives what the row became (deleted by
-- its owner or by the retention cleanup), so it is not imported again.
CREATE TABLE django_user_imports (
    django_id    bigint PRIMARY KEY,
    user_id      uuid NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE django_history_imports (
    django_id       bigint PRIMARY KEY,
    django_user_id  bigint NOT NULL,
    -- The question message the row became.
    question_id     uuid NOT NULL
);
CREATE INDEX django_history_imports_user_idx ON django_history_imports (django_user_id);

-- A number per message for the prototype's clients, which read history `id`s as integers
-- (`GET /api/chat-history/` with SEED_COMPAT_HISTORY=true). Filled for existing rows here.
ALTER TABLE messages ADD COLUMN legacy_id bigint GENERATED ALWAYS AS IDENTITY;
