-- Scheduled deliveries, cancellation, quiet hours (CONTRACT §8). Statuses for §8 and §9.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sent', 'retrying', 'dead', 'scheduled', 'cancelled', 'expired', 'suppressed'));

-- When a `scheduled` delivery falls due (its `send_at`, moved out of quiet hours). Kept after it
-- is released, for reporting (how late was it sent?).
ALTER TABLE deliveries ADD COLUMN due_at TIMESTAMPTZ;
-- wxnotify's own: never send after this instant (`not_after`); the template's `cancel_key`
-- rendered over the event; the event as it arrived, republished to the work queue when due.
ALTER TABLE deliveries ADD COLUMN not_after TIMESTAMPTZ;
ALTER TABLE deliveries ADD COLUMN cancel_key TEXT;
ALTER TABLE deliveries ADD COLUMN payload TEXT;
ALTER TABLE deliveries ADD COLUMN cancelled_by TEXT;

-- Finding due rows stays cheap with millions waiting: only `scheduled` rows are in this index.
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'scheduled';
CREATE INDEX deliveries_cancel_key ON deliveries (app_id, template_id, cancel_key) WHERE cancel_key IS NOT NULL;

-- Every cancelling event, per template it cancels: also applied to deliveries that arrive later
-- (a cancellation may arrive before the booking it cancels).
CREATE TABLE delivery_cancellations (
    app_id      TEXT        NOT NULL,
    template_id TEXT        NOT NULL,
    cancel_key  TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    event_type  TEXT        NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, template_id, cancel_key, event_id)
);

DROP VIEW delivery_daily_summary;
CREATE VIEW delivery_daily_summary AS
WITH per_delivery AS (
    SELECT (created_at AT TIME ZONE 'Asia/Shanghai')::date AS day, app_id, event_type, status, attempts
      FROM deliveries
),
counts AS (
    SELECT day, app_id, event_type,
           count(*)                                    AS deliveries,
           count(*) FILTER (WHERE status = 'sent')      AS sent,
           count(*) FILTER (WHERE status = 'dead')      AS dead,
           count(*) FILTER (WHERE status = 'retrying')  AS retrying,
           count(*) FILTER (WHERE status = 'pending')   AS pending,
           COALESCE(sum(attempts), 0)::bigint           AS attempts,
           count(*) FILTER (WHERE status = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE status = 'expired')   AS expired
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
       c.scheduled, c.cancelled, c.expired
  FROM counts c
  LEFT JOIN latency l USING (day, app_id, event_type);
