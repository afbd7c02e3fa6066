-- delivery_daily_summary gains what WeChat's receipts said (CONTRACT §4, §9): `delivered`,
-- `user_block`, `system_failed` (by receipt_status), and `suppressed` (status: not sent because the
-- user had left). Every earlier column stays, in its place (with 20261123000001's scheduled,
-- cancelled, expired); the new ones come after them.
DROP VIEW delivery_daily_summary;

CREATE VIEW delivery_daily_summary AS
WITH per_delivery AS (
    SELECT (created_at AT TIME ZONE 'Asia/Shanghai')::date AS day, app_id, event_type, status, attempts,
           receipt_status
      FROM deliveries
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
           count(*) FILTER (WHERE status = 'suppressed')            AS suppressed
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
       c.delivered, c.user_block, c.system_failed, c.suppressed
  FROM counts c
  LEFT JOIN latency l USING (day, app_id, event_type);
