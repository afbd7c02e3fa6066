//! Every metric wxnotify exposes, in one place: described (Prometheus HELP) and registered at
//! start-up with each label value it can take, so that a fresh worker exposes every series — an
//! alert on a series that does not exist yet is blind. Label values are bounded: outcomes,
//! statuses, stages and app ids from the configuration, never an errcode or an event's text.

use metrics::{describe_counter, describe_gauge, describe_histogram};

use crate::template::Catalog;
use crate::wechat::Api;

const STAGES: [&str; 7] = ["queued", "rate", "claim", "token", "send", "record", "ack"];
const DUPLICATE_STATUSES: [&str; 7] = [
    "sent",
    "dead",
    "held",
    "scheduled",
    "cancelled",
    "expired",
    "suppressed",
];

/// Describes and registers every series; `apps` are the configured app ids, `catalog` the
/// templates (whose template-message keywords may be shortened).
pub(crate) fn register(apps: &[String], catalog: &Catalog) {
    register_settlements();
    register_consent(catalog);
    register_platforms(catalog);
    register_sends();
    register_stored_fates();
    register_due();
    register_db_errors();
    register_tokens(apps);
    register_lanes(apps);
    register_health();
    register_ledger_batches();
    register_sampled();
}

/// Subscription consent and WeChat's 2023 template-message rules (docs/interface.md §12): what
/// the consent ledger answered, and the values shortened to 20 characters, per template and key.
fn register_consent(catalog: &Catalog) {
    describe_counter!(
        "wxnotify_consent_checks_total",
        "Tracked subscribe deliveries asking the consent ledger for a credit: taken, missing, blocked (switched off in the settings)"
    );
    for r in ["taken", "missing", "blocked"] {
        metrics::counter!("wxnotify_consent_checks_total", "result" => r).increment(0);
    }
    describe_counter!(
        "wxnotify_values_shortened_total",
        "Template-message values shortened to WeChat's 20 characters (with …) or joined across a line break, by template and keyword"
    );
    for t in catalog.templates().iter().filter(|t| t.api == Api::Template) {
        for key in t.keys() {
            let labels = [("template", t.template_id.clone()), ("key", key.clone())];
            metrics::counter!("wxnotify_values_shortened_total", &labels).increment(0);
        }
    }
}

/// The third-party platforms (docs/interface.md §10), when `[[platforms]]` lists any: token
/// refreshes asked of WeChat, merchants by state and the ticket's age (sampled).
fn register_platforms(catalog: &Catalog) {
    if catalog.platforms.is_empty() {
        return;
    }
    describe_counter!(
        "wxnotify_platform_token_refreshes_total",
        "Third-party platform tokens asked of WeChat, by platform, token (component, merchant) and result (ok, failed)"
    );
    describe_gauge!(
        "wxnotify_platform_merchants",
        "A third-party platform's merchants, by state (active, revoked, needs_reauthorization)"
    );
    describe_gauge!(
        "wxnotify_platform_ticket_age_seconds",
        "Since the platform's latest verify ticket was pushed (over 43200: its merchants' new tokens wait for one)"
    );
    for p in &catalog.platforms {
        let platform = p.component_appid.trim().to_string();
        for token in ["component", "merchant"] {
            for result in ["ok", "failed"] {
                let labels = [
                    ("platform", platform.clone()),
                    ("token", token.to_string()),
                    ("result", result.to_string()),
                ];
                metrics::counter!("wxnotify_platform_token_refreshes_total", &labels).increment(0);
            }
        }
        for state in ["active", "revoked", "needs_reauthorization"] {
            metrics::gauge!("wxnotify_platform_merchants", "platform" => platform.clone(), "state" => state).set(0.0);
        }
        metrics::gauge!("wxnotify_platform_ticket_age_seconds", "platform" => platform).set(0.0);
    }
}

/// Fairness between apps (docs/interface.md §11): per app, this worker's share of its rate
/// limit, what waits in this worker's line (for a permit, for the rate), what it parked in the
/// app's lane, and the lane's depth.
fn register_lanes(apps: &[String]) {
    describe_gauge!(
        "wxnotify_waiting",
        "Messages in this worker's line of an app, waiting for a permit or for the app's rate limit"
    );
    describe_counter!(
        "wxnotify_parked_total",
        "Messages this worker parked in their app's lane (the app had more than it could start)"
    );
    describe_gauge!(
        "wxnotify_lane_messages",
        "Ready messages in an app's lane: its backlog, fleet-wide (sampled)"
    );
    describe_gauge!(
        "wxnotify_rate_share",
        "Sends a second this worker may make for an app: its rate limit over the live workers (0: no limit)"
    );
    for app in apps {
        metrics::gauge!("wxnotify_rate_share", "app" => app.clone()).set(0.0);
        for why in ["permit", "rate"] {
            metrics::gauge!("wxnotify_waiting", "app" => app.clone(), "for" => why).set(0.0);
        }
        metrics::counter!("wxnotify_parked_total", "app" => app.clone()).increment(0);
        metrics::gauge!("wxnotify_lane_messages", "app" => app.clone()).set(0.0);
    }
}

/// `wxnotify_messages_total`: every broker message settled, by outcome.
fn register_settlements() {
    describe_counter!(
        "wxnotify_messages_total",
        "Broker messages settled, by outcome (ack, requeue, retry, release, or the dead-letter reason)"
    );
    for o in crate::fate::Outcome::labels() {
        metrics::counter!("wxnotify_messages_total", "outcome" => o).increment(0);
    }
}

/// The sends to WeChat (by result, their duration) and a delivery's time per stage.
fn register_sends() {
    describe_counter!(
        "wxnotify_sends_total",
        "HTTP sends to WeChat, by result: ok, errcode (WeChat refused), transport (no usable answer)"
    );
    for r in ["ok", "errcode", "transport"] {
        metrics::counter!("wxnotify_sends_total", "result" => r).increment(0);
    }
    describe_histogram!("wxnotify_send_seconds", "Duration of one HTTP send to WeChat");
    let _ = metrics::histogram!("wxnotify_send_seconds");
    describe_histogram!(
        "wxnotify_stage_seconds",
        "Time a delivery spends per stage: queued (occurred_at to consume), rate (waiting for a send slot), claim, token, send, record, ack"
    );
    for s in STAGES {
        let _ = metrics::histogram!("wxnotify_stage_seconds", "stage" => s);
    }
}

/// Deliveries not sent now: duplicates of another copy, and those stored to wait.
fn register_stored_fates() {
    describe_counter!(
        "wxnotify_duplicates_total",
        "Copies of a delivery that was final, waiting or held elsewhere: not sent again"
    );
    for s in DUPLICATE_STATUSES {
        metrics::counter!("wxnotify_duplicates_total", "status" => s).increment(0);
    }
    describe_counter!(
        "wxnotify_held_total",
        "Deliveries stored to wait (scheduled, cancelled, expired) and waiting ones cancelled by another event (cancelled_other)"
    );
    for s in ["scheduled", "cancelled", "expired", "cancelled_other"] {
        metrics::counter!("wxnotify_held_total", "status" => s).increment(0);
    }
}

/// The due-delivery loop: what it did with due deliveries, and how late it took them.
fn register_due() {
    describe_counter!(
        "wxnotify_due_total",
        "Due deliveries taken by the due-delivery loop: released, deferred (quiet hours), expired"
    );
    for f in ["released", "deferred", "expired"] {
        metrics::counter!("wxnotify_due_total", "fate" => f).increment(0);
    }
    describe_histogram!(
        "wxnotify_due_lateness_seconds",
        "How long after its due_at a due delivery was taken for release"
    );
    let _ = metrics::histogram!("wxnotify_due_lateness_seconds");
}

/// `wxnotify_db_errors_total`: database calls retried.
fn register_db_errors() {
    describe_counter!(
        "wxnotify_db_errors_total",
        "Database calls that failed and were retried"
    );
    metrics::counter!("wxnotify_db_errors_total").increment(0);
}

/// The token series, one set per configured app.
fn register_tokens(apps: &[String]) {
    describe_counter!(
        "wxnotify_token_fetches_total",
        "Access token fetches from WeChat, by app and result"
    );
    describe_counter!(
        "wxnotify_token_rejections_total",
        "Tokens WeChat rejected (40001, 40014, 42001), by app"
    );
    describe_gauge!(
        "wxnotify_token_expires_in_seconds",
        "Seconds until the app's shared token expires"
    );
    describe_gauge!(
        "wxnotify_token_calls_today",
        "Token API calls today (Beijing day) by app, of WeChat's 2,000 a day"
    );
    describe_gauge!(
        "wxnotify_token_blocked",
        "1 while the app's token API use is blocked (quota, credentials)"
    );
    for app in apps {
        for r in ["ok", "error"] {
            metrics::counter!("wxnotify_token_fetches_total", "app" => app.clone(), "result" => r).increment(0);
        }
        metrics::counter!("wxnotify_token_rejections_total", "app" => app.clone()).increment(0);
        for g in [
            "wxnotify_token_expires_in_seconds",
            "wxnotify_token_calls_today",
            "wxnotify_token_blocked",
        ] {
            metrics::gauge!(g, "app" => app.clone()).set(0.0);
        }
    }
}

/// The worker's own state: broker and database up, its deliveries in flight.
fn register_health() {
    describe_gauge!("wxnotify_broker_up", "1 while the worker's broker session is consuming");
    describe_gauge!("wxnotify_db_up", "1 while the database answered the last call");
    metrics::gauge!("wxnotify_broker_up").set(0.0);
    metrics::gauge!("wxnotify_db_up").set(0.0);
    describe_gauge!("wxnotify_in_flight", "Deliveries this worker is working on right now");
    metrics::gauge!("wxnotify_in_flight").set(0.0);
    describe_counter!(
        "wxnotify_allocations_total",
        "Heap allocations of this process; counted only with WXNOTIFY_COUNT_ALLOCATIONS=1 (benchmarks)"
    );
    metrics::counter!("wxnotify_allocations_total").absolute(0);
}

/// The batched ledger statements: duration and size, by kind.
fn register_ledger_batches() {
    describe_histogram!(
        "wxnotify_ledger_statement_seconds",
        "Duration of one batched ledger statement, by kind (claim, record; hold: a transaction)"
    );
    describe_histogram!(
        "wxnotify_ledger_batch_size",
        "Requests one batched ledger statement carried, by kind"
    );
    for k in ["claim", "record", "hold"] {
        let _ = metrics::histogram!("wxnotify_ledger_statement_seconds", "kind" => k);
        let _ = metrics::histogram!("wxnotify_ledger_batch_size", "kind" => k);
    }
}

/// The sampled gauges: queue depths and consumers, ledger states, scheduler lag, live workers.
fn register_sampled() {
    describe_gauge!(
        "wxnotify_queue_messages",
        "Messages ready in the work queue, the dead-letter queue and all retry queues (sampled)"
    );
    describe_gauge!("wxnotify_queue_consumers", "Consumers of the work queue (sampled)");
    for q in ["work", "dlq", "retry"] {
        metrics::gauge!("wxnotify_queue_messages", "queue" => q).set(0.0);
    }
    metrics::gauge!("wxnotify_queue_consumers").set(0.0);
    describe_gauge!(
        "wxnotify_deliveries",
        "Deliveries in the ledger by state: in_doubt, scheduled, due (sampled)"
    );
    for s in ["in_doubt", "scheduled", "due"] {
        metrics::gauge!("wxnotify_deliveries", "state" => s).set(0.0);
    }
    describe_gauge!(
        "wxnotify_scheduler_lag_seconds",
        "How long the oldest due delivery has waited for release (0: none due)"
    );
    metrics::gauge!("wxnotify_scheduler_lag_seconds").set(0.0);
    describe_gauge!("wxnotify_live_workers", "Workers whose heartbeat is fresh (sampled)");
    metrics::gauge!("wxnotify_live_workers").set(0.0);
}
