//! The consent ledger straight in Postgres: pushes repeated and shuffled among the sends they pay
//! for, against a model of what the user allowed.

use chrono::{DateTime, Duration as Span, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

/// What can happen to one (app, openid, template).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    /// A push (`consent_log.kind`) created `secs` before now, as WeChat writes it.
    Push(&'static str, i64),
    /// Delivery `id` asks for a credit.
    Take(i64),
    /// Delivery `id`'s send did not spend it (`refused`: WeChat answered 43101).
    GiveBack(i64, bool),
}

/// The user's history: two accepts, a settings reject between them and a later accept, a pop-up
/// reject; each push three times (WeChat repeats a push it had no answer to); three deliveries
/// (ids from `first`, unique like the ledger's) ask for a credit, and the third's send does not
/// spend it.
fn history(first: i64) -> Vec<Op> {
    let pushes = [
        ("accept", 30),
        ("accept", 20),
        ("settings_reject", 25),
        ("accept", 10),
        ("reject", 5),
    ];
    let mut ops: Vec<Op> = pushes
        .iter()
        .flat_map(|&(kind, secs)| std::iter::repeat_n(Op::Push(kind, secs), 3))
        .collect();
    ops.extend([
        Op::Take(first),
        Op::Take(first + 1),
        Op::Take(first + 2),
        Op::GiveBack(first + 2, false),
    ]);
    ops
}

/// The fold, by hand: what the pushes applied so far and the credits taken allow.
#[derive(Debug, Default)]
struct Model {
    pushes: std::collections::BTreeSet<(&'static str, i64)>,
    /// Deliveries holding a credit (their `use`, stamped now: after every push).
    holding: std::collections::BTreeSet<i64>,
}

impl Model {
    /// (credits, blocked): what is left after the last reset (a settings reject; its time in
    /// `secs` before now, so larger is older).
    fn state(&self) -> (i64, bool) {
        let reset = self
            .pushes
            .iter()
            .filter(|p| p.0 == "settings_reject")
            .map(|p| p.1)
            .min();
        let newer = |secs: i64| reset.is_none_or(|r| secs < r);
        let accepts = self.pushes.iter().filter(|p| p.0 == "accept" && newer(p.1)).count() as i64;
        let reopened = self
            .pushes
            .iter()
            .filter(|p| p.0 == "accept" || p.0 == "settings_accept")
            .map(|p| p.1)
            .min();
        let blocked = reset.is_some_and(|r| reopened.is_none_or(|o| o > r));
        ((accepts - self.holding.len() as i64).max(0), blocked)
    }
}

async fn apply(pool: &sqlx::PgPool, openid: &str, now: DateTime<Utc>, op: Op) -> Option<bool> {
    match op {
        Op::Push(kind, secs) => {
            let at = now - Span::seconds(secs);
            sqlx::query("SELECT apply_consent_push($1, $2, $3, $4, $5, $6)")
                .bind(APP_ID)
                .bind(openid)
                .bind(vec!["TPL_R"])
                .bind(vec![kind])
                .bind(at)
                .bind(at.timestamp())
                .execute(pool)
                .await
                .unwrap();
            None
        }
        Op::Take(id) => Some(
            sqlx::query_scalar("SELECT granted FROM consent_take($1, $2, 'TPL_R', $3)")
                .bind(APP_ID)
                .bind(openid)
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap(),
        ),
        Op::GiveBack(id, refused) => {
            sqlx::query("SELECT 1 FROM consent_give_back($1, $2, 'TPL_R', $3, $4)")
                .bind(APP_ID)
                .bind(openid)
                .bind(id)
                .bind(refused)
                .execute(pool)
                .await
                .unwrap();
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_repeated_and_shuffled_among_the_sends_leave_the_ledger_right_in_every_order() {
    let env = TestEnv::new().await;
    let seed: u64 = std::env::var("CONSENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Whole seconds: the pushes' CreateTime is in seconds, and their times are compared exactly.
    let now = DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).unwrap();
    for run in 0..150 {
        let openid = format!("oOrder{run}");
        let mut ops = history(run * 10);
        ops.shuffle(&mut rng);
        let mut model = Model::default();
        for op in &ops {
            // A give-back only follows its own take (the worker's order), and only if it took.
            if let Op::GiveBack(id, _) = op
                && !model.holding.contains(id)
            {
                continue;
            }
            let (credits, blocked) = model.state();
            let granted = apply(&env.pool, &openid, now, *op).await;
            match *op {
                Op::Push(kind, secs) => {
                    model.pushes.insert((kind, secs));
                }
                Op::Take(id) => {
                    let expected = credits > 0 && !blocked;
                    assert_eq!(granted, Some(expected), "seed {seed}, run {run}, {ops:?}: take {id}");
                    if expected {
                        model.holding.insert(id);
                    }
                }
                Op::GiveBack(id, _) => {
                    model.holding.remove(&id);
                }
            }
        }
        let row: (i32, bool) =
            sqlx::query_as("SELECT credits, blocked FROM consents WHERE openid = $1 AND template_id = 'TPL_R'")
                .bind(&openid)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        let (credits, blocked) = model.state();
        assert_eq!(
            (i64::from(row.0), row.1),
            (credits, blocked),
            "seed {seed}, run {run}, {ops:?}"
        );
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_log WHERE openid = $1 AND kind <> 'use'")
            .bind(&openid)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(logged, 5, "each push once, however often it came");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_43101_resets_the_credits_and_an_accept_after_it_counts_again() {
    let env = TestEnv::new().await;
    let now = DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).unwrap();
    let pool = &env.pool;
    for op in [Op::Push("accept", 40), Op::Push("accept", 30)] {
        apply(pool, "oRefused", now, op).await;
    }
    assert_eq!(apply(pool, "oRefused", now, Op::Take(1)).await, Some(true));
    // WeChat says no: the credit is given back and the ledger agrees there is none left.
    apply(pool, "oRefused", now, Op::GiveBack(1, true)).await;
    assert_eq!(apply(pool, "oRefused", now, Op::Take(2)).await, Some(false));
    // A late push of an accept older than the refusal changes nothing; a new accept counts.
    apply(pool, "oRefused", now, Op::Push("accept", 35)).await;
    assert_eq!(apply(pool, "oRefused", now, Op::Take(2)).await, Some(false));
    apply(pool, "oRefused", Utc::now(), Op::Push("accept", -1)).await;
    assert_eq!(apply(pool, "oRefused", now, Op::Take(2)).await, Some(true));
    // A copy of delivery 2 (a redelivery after a crash) finds its credit taken, not a second one.
    apply(pool, "oRefused", Utc::now(), Op::Push("accept", -2)).await;
    assert_eq!(apply(pool, "oRefused", now, Op::Take(2)).await, Some(true));
    let credits: i32 = sqlx::query_scalar("SELECT credits FROM consents WHERE openid = 'oRefused'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(credits, 1);
}
