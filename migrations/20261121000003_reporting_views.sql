-- Reporting views (CONTRACT §4). Days are Beijing days (Asia/Shanghai), as WeChat counts quotas.

-- Per day, app and event type: deliveries by status and the HTTP send latency.
CREATE VIEW delivery_daily_summary AS
WITH per_delivery AS (
    SELECT (created_at AT TIME ZONE 'Asia/Shanghai')::date AS day, app_id, event_type, status, attempts
      FROM deliveries
),
counts AS (
    SELECT day, app_id, event_type,
           count(*)                                   AS deliveries,
           count(*) FILTER (WHERE status = 'sent')     AS sent,
           count(*) FILTER (WHERE status = 'dead')     AS dead,
           count(*) FILTER (WHERE status = 'retrying') AS retrying,
           count(*) FILTER (WHERE status = 'pending')  AS pending,
           COALESCE(sum(attempts), 0)::bigint          AS attempts
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
       round(l.p95_send_ms::numeric, 1)::double precision AS p95_send_ms
  FROM counts c
  LEFT JOIN latency l USING (day, app_id, event_type);

-- Failed HTTP attempts by WeChat errcode (NULL: no errcode, e.g. HTTP 5xx or a timeout), with the
-- deliveries they hit, how many of those ended dead on that errcode, and the latest example.
CREATE VIEW delivery_failures AS
WITH failed AS (
    SELECT a.errcode, a.errmsg, a.http_status, a.started_at, a.delivery_id,
           d.event_id, d.event_type, d.app_id, d.status, d.last_errcode
      FROM delivery_attempts a
      JOIN deliveries d ON d.id = a.delivery_id
     WHERE a.errcode IS DISTINCT FROM 0
),
latest AS (
    SELECT DISTINCT ON (errcode) errcode, event_id, event_type, app_id, errmsg, http_status
      FROM failed
     ORDER BY errcode, started_at DESC
)
SELECT f.errcode,
       count(*)                                                             AS attempts,
       count(DISTINCT f.delivery_id)                                        AS deliveries,
       count(DISTINCT f.delivery_id) FILTER (WHERE f.status = 'dead'
                                               AND f.last_errcode IS NOT DISTINCT FROM f.errcode) AS dead,
       min(f.started_at)                                                    AS first_seen,
       max(f.started_at)                                                    AS last_seen,
       l.event_id    AS latest_event_id,
       l.event_type  AS latest_event_type,
       l.app_id      AS latest_app_id,
       l.errmsg      AS latest_errmsg,
       l.http_status AS latest_http_status
  FROM failed f
  JOIN latest l ON l.errcode IS NOT DISTINCT FROM f.errcode
 GROUP BY f.errcode, l.event_id, l.event_type, l.app_id, l.errmsg, l.http_status;
