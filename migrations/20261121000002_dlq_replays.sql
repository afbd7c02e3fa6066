-- One row per dead letter `wxnotify dlq replay` moved back to the work queue (CONTRACT §5).
CREATE TABLE dlq_replays (
    id          BIGSERIAL PRIMARY KEY,
    -- One run of the command; its copies carry it in the `wxnotify-replay` header.
    replay_id   TEXT        NOT NULL,
    replayed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The command's filter, e.g. `--errcode 43004`.
    filter      TEXT        NOT NULL,
    event_id    TEXT,
    event_type  TEXT,
    reason      TEXT        NOT NULL,
    errcode     BIGINT,
    dead_at     TIMESTAMPTZ,
    operator    TEXT
);

CREATE INDEX dlq_replays_event ON dlq_replays (event_id);
