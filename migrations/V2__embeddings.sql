-- Embedding cache: a restart or a knowledge-base reload embeds only text it has not seen with the
-- same provider, model and dimension. Vectors of different models never share a key, so an index
-- is never built from a mix of them.
CREATE TABLE embedding_cache (
    provider     text        NOT NULL,   -- local, gemini, openai
    model        text        NOT NULL,
    dimension    integer     NOT NULL CHECK (dimension > 0),
    content_hash text        NOT NULL,   -- SHA-256 (hex) of the exact text embedded
    -- little-endian f32 values, L2-normalised; bytea keeps rows compact and loads fast
    vector       bytea       NOT NULL CHECK (octet_length(vector) = 4 * dimension),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model, dimension, content_hash)
);
