-- Knowledge-base documents managed through the admin API. They overlay KNOWLEDGE_BASE_DIR: the
-- loaded set is the folder's files, with a live row here adding a document or replacing the
-- file of the same name, and a deleted row (a tombstone) hiding it. Every instance loads the
-- same rows, so they all serve the same set whatever their local folders hold.
CREATE TABLE kb_documents (
    name         text PRIMARY KEY,              -- e.g. 'returns.md', 'manuals/oven.pdf'
    -- markdown, text, html or pdf: how `body` was turned into `text`
    kind         text NOT NULL CHECK (kind IN ('markdown', 'text', 'html', 'pdf')),
    -- The document as uploaded, and the text extracted from it (what gets chunked). Both NULL
    -- on a tombstone.
    body         bytea,
    text         text,
    deleted      boolean NOT NULL DEFAULT false,
    updated_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (deleted OR (body IS NOT NULL AND text IS NOT NULL))
);
