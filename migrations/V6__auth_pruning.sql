-- The scheduled cleanup also prunes what authentication leaves behind (old failed-login rows,
-- long-expired refresh tokens); these indexes let it find them without a scan.
CREATE INDEX login_failures_failed_at_idx ON login_failures (failed_at);
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);
