-- Subscription consent (docs/interface.md §12) and WeChat's `failed:freq limit` receipts (§9).

-- A receipt may now say `freq_limit` (TEMPLATESENDJOBFINISH `failed:freq limit`). Live-table safe:
-- the wider checks are added NOT VALID (a catalog change: the tables' lock is held for the
-- moment of this transaction, no scan under it); the next two migrations validate them without
-- stopping writers.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_receipt_status_check,
    ADD CONSTRAINT deliveries_receipt_status_check
        CHECK (receipt_status IN ('delivered', 'user_block', 'system_failed', 'freq_limit')) NOT VALID;
ALTER TABLE delivery_receipts DROP CONSTRAINT delivery_receipts_status_check,
    ADD CONSTRAINT delivery_receipts_status_check
        CHECK (status IN ('delivered', 'user_block', 'system_failed', 'freq_limit')) NOT VALID;

-- Everything that moves a user's consent to one subscribe template, one row each: pushes
-- (`accept` / `reject` from the pop-up, `settings_accept` / `settings_reject` from the settings
-- page; `at` is the push's CreateTime, no later than its arrival) and our own sends (`use`: a
-- credit spent by a delivery, `refused`: WeChat answered 43101; `at` is the database's clock).
-- The consent is a fold over these rows (consent_recount), so pushes and sends may arrive in
-- any order and any number of times.
CREATE TABLE consent_log (
    id                 BIGSERIAL PRIMARY KEY,
    app_id             TEXT        NOT NULL,
    openid             TEXT        NOT NULL,
    template_id        TEXT        NOT NULL,
    kind               TEXT        NOT NULL
                       CHECK (kind IN ('accept', 'reject', 'settings_accept', 'settings_reject', 'use', 'refused')),
    at                 TIMESTAMPTZ NOT NULL,
    -- A push's CreateTime as WeChat wrote it: with the rest of the key, what makes a repeated
    -- push (WeChat tries up to 3 times) the same row. NULL for our own rows.
    push_create_time   BIGINT,
    -- The delivery that spent (`use`) or met a refusal (`refused`).
    delivery_id        BIGINT,
    received_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((push_create_time IS NULL) = (kind IN ('use', 'refused')))
);

CREATE UNIQUE INDEX consent_log_push ON consent_log (app_id, openid, template_id, kind, push_create_time)
    WHERE push_create_time IS NOT NULL;
-- A delivery spends at most one credit, whatever copies of its message come.
CREATE UNIQUE INDEX consent_log_use ON consent_log (delivery_id) WHERE kind = 'use';
CREATE INDEX consent_log_key ON consent_log (app_id, openid, template_id);
CREATE INDEX consent_log_at ON consent_log (at);

-- The fold's result per (app, openid, template), and the row every change locks first.
CREATE TABLE consents (
    app_id      TEXT        NOT NULL,
    openid      TEXT        NOT NULL,
    template_id TEXT        NOT NULL,
    -- Messages the user allows now.
    credits     INTEGER     NOT NULL DEFAULT 0 CHECK (credits >= 0),
    -- A settings-page reject newer than any accept.
    blocked     BOOLEAN     NOT NULL DEFAULT false,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, openid, template_id)
);

-- Locks the key's `consents` row (creating it): every change to one key runs one at a time.
CREATE FUNCTION consent_lock(p_app TEXT, p_openid TEXT, p_template TEXT) RETURNS consents
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    c consents;
BEGIN
    INSERT INTO consents (app_id, openid, template_id) VALUES (p_app, p_openid, p_template)
        ON CONFLICT DO NOTHING;
    SELECT * INTO c FROM consents
     WHERE app_id = p_app AND openid = p_openid AND template_id = p_template FOR UPDATE;
    RETURN c;
END
$$;

-- The fold (the caller holds the lock). The last reset is the latest settings reject or 43101:
-- what came before it counts no more. Credits: accepts after it minus uses after it (never below
-- zero). Blocked: the latest settings reject is newer than any accept.
CREATE FUNCTION consent_recount(p_app TEXT, p_openid TEXT, p_template TEXT) RETURNS consents
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    reset_at   TIMESTAMPTZ;
    rejected   TIMESTAMPTZ;
    reopened   TIMESTAMPTZ;
    n          BIGINT;
    c          consents;
BEGIN
    SELECT max(at) FILTER (WHERE kind IN ('settings_reject', 'refused')),
           max(at) FILTER (WHERE kind = 'settings_reject'),
           max(at) FILTER (WHERE kind IN ('accept', 'settings_accept'))
      INTO reset_at, rejected, reopened
      FROM consent_log WHERE app_id = p_app AND openid = p_openid AND template_id = p_template;
    SELECT count(*) FILTER (WHERE kind = 'accept') - count(*) FILTER (WHERE kind = 'use')
      INTO n
      FROM consent_log
     WHERE app_id = p_app AND openid = p_openid AND template_id = p_template
       AND (reset_at IS NULL OR at > reset_at);
    UPDATE consents
       SET credits = GREATEST(n, 0)::int,
           blocked = rejected IS NOT NULL AND (reopened IS NULL OR rejected > reopened),
           updated_at = now()
     WHERE app_id = p_app AND openid = p_openid AND template_id = p_template
    RETURNING * INTO c;
    RETURN c;
END
$$;

-- One push's choices (the same CreateTime), applied: each new row logged and its key recounted.
-- Keys are locked in template order, so two pushes never wait for each other in a circle.
-- Returns how many rows were new (0: the push was seen before).
CREATE FUNCTION apply_consent_push(
    p_app TEXT, p_openid TEXT, p_templates TEXT[], p_kinds TEXT[], p_at TIMESTAMPTZ, p_create_time BIGINT
) RETURNS INTEGER LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    item RECORD;
    added INTEGER := 0;
BEGIN
    FOR item IN SELECT DISTINCT t.template_id, t.kind
                  FROM unnest(p_templates, p_kinds) AS t(template_id, kind)
                 ORDER BY t.template_id, t.kind LOOP
        PERFORM consent_lock(p_app, p_openid, item.template_id);
        INSERT INTO consent_log (app_id, openid, template_id, kind, at, push_create_time)
        VALUES (p_app, p_openid, item.template_id, item.kind, p_at, p_create_time)
            ON CONFLICT (app_id, openid, template_id, kind, push_create_time)
               WHERE push_create_time IS NOT NULL DO NOTHING;
        IF FOUND THEN
            added := added + 1;
            PERFORM consent_recount(p_app, p_openid, item.template_id);
        END IF;
    END LOOP;
    RETURN added;
END
$$;

-- A delivery about to be sent takes one credit. Idempotent per delivery: a copy of its message
-- (a redelivery after a crash mid-send) finds its credit taken and goes on with it.
CREATE FUNCTION consent_take(p_app TEXT, p_openid TEXT, p_template TEXT, p_delivery BIGINT)
RETURNS TABLE (granted BOOLEAN, credits INTEGER, blocked BOOLEAN)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    c consents;
BEGIN
    c := consent_lock(p_app, p_openid, p_template);
    IF EXISTS (SELECT 1 FROM consent_log l WHERE l.delivery_id = p_delivery AND l.kind = 'use') THEN
        RETURN QUERY SELECT true, c.credits, c.blocked;
    ELSIF c.credits > 0 AND NOT c.blocked THEN
        INSERT INTO consent_log (app_id, openid, template_id, kind, at, delivery_id)
        VALUES (p_app, p_openid, p_template, 'use', now(), p_delivery);
        c := consent_recount(p_app, p_openid, p_template);
        RETURN QUERY SELECT true, c.credits, c.blocked;
    ELSE
        RETURN QUERY SELECT false, c.credits, c.blocked;
    END IF;
END
$$;

-- The send did not spend the credit (WeChat refused it, or it never left): it is given back.
-- With p_refused (WeChat answered 43101), WeChat says there is none: the consent resets to zero.
CREATE FUNCTION consent_give_back(
    p_app TEXT, p_openid TEXT, p_template TEXT, p_delivery BIGINT, p_refused BOOLEAN
) RETURNS consents LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM consent_lock(p_app, p_openid, p_template);
    DELETE FROM consent_log WHERE delivery_id = p_delivery AND kind = 'use';
    IF p_refused THEN
        INSERT INTO consent_log (app_id, openid, template_id, kind, at, delivery_id)
        VALUES (p_app, p_openid, p_template, 'refused', now(), p_delivery);
    END IF;
    RETURN consent_recount(p_app, p_openid, p_template);
END
$$;

-- delivery_daily_summary gains `freq_limit` (by receipt_status) and, per (day, app, event type),
-- `consents_used` (deliveries that spent a credit) and `consents_missing` (suppressed for want
-- of one). Every earlier column stays, in its place; the new ones come after them.
DROP VIEW delivery_daily_summary;

CREATE VIEW delivery_daily_summary AS
WITH per_delivery AS (
    SELECT (d.created_at AT TIME ZONE 'Asia/Shanghai')::date AS day, d.app_id, d.event_type, d.status,
           d.attempts, d.receipt_status,
           (d.status = 'sent' AND EXISTS (SELECT 1 FROM consent_log l WHERE l.delivery_id = d.id AND l.kind = 'use'))
               AS consent_used,
           (d.status = 'suppressed' AND d.last_error = 'no subscription consent') AS consent_missing
      FROM deliveries d
),
counts AS (
    SELECT day, app_id, event_type,
           count(*)                                                 AS deliveries,
           count(*) FILTER (WHERE status = 'sent')                  AS sent,
           count(*) FILTER (WHERE status = 'dead')                  AS dead,
           count(*) FILTER (WHERE status = 'retrying')              AS retrying,
           count(*) FILTER (WHERE status = 'pending')               AS pending,
           COALESCE(sum(attempts), 0)::bigint                       AS attempts,
           count(*) FILTER (WHERE status = 'scheduled')             AS scheduled,
           count(*) FILTER (WHERE status = 'cancelled')             AS cancelled,
           count(*) FILTER (WHERE status = 'expired')               AS expired,
           count(*) FILTER (WHERE receipt_status = 'delivered')     AS delivered,
           count(*) FILTER (WHERE receipt_status = 'user_block')    AS user_block,
           count(*) FILTER (WHERE receipt_status = 'system_failed') AS system_failed,
           count(*) FILTER (WHERE status = 'suppressed')            AS suppressed,
           count(*) FILTER (WHERE receipt_status = 'freq_limit')    AS freq_limit,
           count(*) FILTER (WHERE consent_used)                     AS consents_used,
           count(*) FILTER (WHERE consent_missing)                  AS consents_missing
      FROM per_delivery
     GROUP BY 1, 2, 3
),
latency AS (
    SELECT (d.created_at AT TIME ZONE 'Asia/Shanghai')::date AS day, d.app_id, d.event_type,
           percentile_cont(0.5)  WITHIN GROUP (ORDER BY a.duration_ms) AS p50_send_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms) AS p95_send_ms
      FROM delivery_attempts a
      JOIN deliveries d ON d.id = a.delivery_id
     GROUP BY 1, 2, 3
)
SELECT c.day, c.app_id, c.event_type, c.deliveries, c.sent, c.dead, c.retrying, c.pending, c.attempts,
       round(l.p50_send_ms::numeric, 1)::double precision AS p50_send_ms,
       round(l.p95_send_ms::numeric, 1)::double precision AS p95_send_ms,
       c.scheduled, c.cancelled, c.expired,
       c.delivered, c.user_block, c.system_failed, c.suppressed,
       c.freq_limit, c.consents_used, c.consents_missing
  FROM counts c
  LEFT JOIN latency l USING (day, app_id, event_type);

-- Consent per (Beijing day, app, subscribe template): accepts granted (pop-up), credits used
-- (sends), deliveries suppressed for want of one, and rejects (pop-up or settings page).
CREATE VIEW consent_daily_summary AS
WITH logged AS (
    SELECT (at AT TIME ZONE 'Asia/Shanghai')::date AS day, app_id, template_id,
           count(*) FILTER (WHERE kind = 'accept')                            AS granted,
           count(*) FILTER (WHERE kind = 'use')                               AS used,
           count(*) FILTER (WHERE kind IN ('reject', 'settings_reject'))      AS rejected
      FROM consent_log
     GROUP BY 1, 2, 3
),
missing AS (
    SELECT (created_at AT TIME ZONE 'Asia/Shanghai')::date AS day, app_id, template_id, count(*) AS missing
      FROM deliveries
     WHERE status = 'suppressed' AND last_error = 'no subscription consent'
     GROUP BY 1, 2, 3
)
SELECT day, app_id, template_id,
       COALESCE(l.granted, 0)  AS granted,
       COALESCE(l.used, 0)     AS used,
       COALESCE(m.missing, 0)  AS missing,
       COALESCE(l.rejected, 0) AS rejected
  FROM logged l
  FULL JOIN missing m USING (day, app_id, template_id);
