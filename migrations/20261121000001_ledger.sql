-- The idempotency ledger (CONTRACT §4). One row per delivery key; one row per HTTP attempt.

CREATE TABLE deliveries (
    id            BIGSERIAL PRIMARY KEY,
    event_id      TEXT        NOT NULL,
    event_type    TEXT        NOT NULL,
    app_id        TEXT        NOT NULL,
    openid        TEXT        NOT NULL,
    template_id   TEXT        NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'sent', 'retrying', 'dead')),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_errcode  BIGINT,
    last_error    TEXT,
    -- WeChat msgids exceed 2^53: a 64-bit integer, never a float.
    wechat_msgid  BIGINT,
    occurred_at   TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at       TIMESTAMPTZ,
    -- Below: wxnotify's own bookkeeping.
    dead_reason   TEXT,
    client_msg_id TEXT        NOT NULL,
    -- The worker holding the claim, and until when (NULL when nobody holds it).
    owner         TEXT,
    lease_until   TIMESTAMPTZ,
    claimed_at    TIMESTAMPTZ,
    -- The earliest send whose outcome is unknown (a crash or timeout mid-send). A resend within
    -- WeChat's 10-minute client_msg_id window is dropped by WeChat; later it would be a duplicate.
    in_doubt_since TIMESTAMPTZ,
    CONSTRAINT deliveries_key UNIQUE (event_id, template_id, openid)
);

CREATE INDEX deliveries_created_at ON deliveries (created_at);
CREATE INDEX deliveries_status ON deliveries (status, updated_at);

CREATE TABLE delivery_attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  BIGINT      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER     NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  INTEGER     NOT NULL,
    http_status  INTEGER,
    errcode      BIGINT,
    errmsg       TEXT,
    worker       TEXT
);

CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);

-- Live worker processes. A claim whose owner has not beaten for a while is taken over.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One access token per app, shared by every worker process. The row lock is the cross-process
-- single-flight: whoever holds it refreshes; the others wait, then find the new generation.
CREATE TABLE wechat_tokens (
    app_id         TEXT PRIMARY KEY,
    access_token   TEXT,
    token_api      TEXT,
    generation     BIGINT      NOT NULL DEFAULT 0,
    expires_at     TIMESTAMPTZ,
    refresh_after  TIMESTAMPTZ,
    fetched_at     TIMESTAMPTZ,
    -- Set after a credentials error or the daily quota: nobody asks WeChat again before this.
    blocked_until  TIMESTAMPTZ,
    blocked_reason TEXT,
    last_forced_at TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Token API calls per app, day (Beijing time, when WeChat's quotas reset) and API, against the quotas.
CREATE TABLE wechat_token_fetches (
    app_id    TEXT    NOT NULL,
    day       DATE    NOT NULL,
    token_api TEXT    NOT NULL,
    calls     INTEGER NOT NULL DEFAULT 0,
    forced    INTEGER NOT NULL DEFAULT 0,
    failures  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, day, token_api)
);
