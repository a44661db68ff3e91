-- Per-user limits shared by every instance.
--
-- rate_logs: a sliding log of recent hits per key (asks per minute per user): one row per key
-- holding the times of its hits within the window, checked and appended by one upsert, so
-- parallel asks on several instances cannot slip past the limit together. Rows idle for an hour
-- are deleted by the relay sweep.
CREATE UNLOGGED TABLE rate_logs (
    key  text PRIMARY KEY,
    hits timestamptz[] NOT NULL
);

-- socket_leases: one row per open chat socket, for WS_MAX_SOCKETS_PER_USER across instances.
-- A socket takes a lease when it authenticates (one statement under a per-user advisory lock,
-- counting only leases of live instances) and gives it back when it closes. Leases of an
-- instance that stopped beating in `instances` do not count and are deleted by the sweep.
CREATE UNLOGGED TABLE socket_leases (
    lease_id    uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    instance_id uuid NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX socket_leases_user_idx ON socket_leases (user_id);
CREATE INDEX socket_leases_instance_idx ON socket_leases (instance_id);
