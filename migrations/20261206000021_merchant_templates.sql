-- Library templates on merchants' accounts (docs/interface.md §10, "Templates per merchant"): the
-- id `api_add_template` gave a library template (with these keyword names) on one merchant's
-- account, or WeChat's refusal. The row lock is the fleet-wide single flight: one
-- `api_add_template` per (merchant, template).
CREATE TABLE merchant_templates (
    authorizer_appid TEXT        NOT NULL,
    library_id       TEXT        NOT NULL,
    keywords         JSONB       NOT NULL,
    template_id      TEXT,
    added_at         TIMESTAMPTZ,
    -- WeChat's refusal (e.g. 45026, the account's 25 templates), answered from here for an hour.
    errcode          BIGINT,
    errmsg           TEXT,
    refused_at       TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (authorizer_appid, library_id, keywords)
);

-- Without a verify ticket younger than 12 h WeChat is asked to push one (`api_start_push_ticket`),
-- at most once a minute for the whole fleet: when it was last asked.
ALTER TABLE platform_tokens ADD COLUMN ticket_asked_at TIMESTAMPTZ;

-- A merchant's state changed (revoked, re-authorized, needs re-authorization): every worker
-- forgets the token it cached for it at once, so no booking of a revoked merchant is sent with it.
CREATE FUNCTION authorizers_notify_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wxnotify_merchants', NEW.authorizer_appid);
    RETURN NULL;
END
$$;

CREATE TRIGGER authorizers_state_changed
    AFTER UPDATE OF state ON authorizers
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION authorizers_notify_state();
