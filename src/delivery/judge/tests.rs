//! The fate table: errcode class × attempts × doubt × age against the window × template or
//! subscribe × replay, with no services.

use std::time::Duration;

use super::*;

fn policy() -> RetryPolicy {
    RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(300))
}

fn facts(api: Api) -> Facts {
    Facts {
        api,
        failed_before: 0,
        token_requeues: 0,
        redeliveries: 0,
        in_doubt_for: None,
        render_error: None,
        not_after: None,
        quiet_hours: None,
        unfollowed: false,
        cancelled_by: None,
        consent: ConsentSeen::NotTracked,
        now: "2026-11-22T08:00:00Z".parse().unwrap(),
    }
}

fn done(v: Option<Plan>) -> Plan {
    v.expect("expected a plan, not a send")
}

fn answered(f: &Facts, answer: Answer) -> Plan {
    judge(
        f,
        Step::Answered {
            answer: &answer,
            generation: 7,
        },
        &policy(),
    )
}

fn refused(f: &Facts, errcode: i64) -> Plan {
    answered(
        f,
        Answer::Refused {
            errcode,
            errmsg: "x rid: 1".into(),
        },
    )
}

fn reason(p: &Plan) -> Option<DeadReason> {
    match &p.outcome {
        Outcome::DeadLetter(d) => Some(d.reason),
        _ => None,
    }
}

#[test]
fn accepted_is_acked_and_recorded_sent_with_its_msgid() {
    for api in [Api::Template, Api::Subscribe] {
        let p = answered(&facts(api), Answer::Accepted { msgid: Some(i64::MAX) });
        assert_eq!(p.outcome, Outcome::Ack);
        assert_eq!(p.finish, Some(Finish::Sent { msgid: Some(i64::MAX) }));
        assert_eq!(p.replace_token, None);
    }
}

#[test]
fn every_errcode_class_has_its_reaction_for_each_attempt() {
    let p = policy();
    for failed_before in 0..p.max_attempts {
        let last = failed_before + 1 == p.max_attempts;
        let f = Facts {
            failed_before,
            ..facts(Api::Template)
        };
        // Transient (-1) and minute quota (45011): counted; the last one is exhausted.
        for code in [-1, 45011] {
            let plan = refused(&f, code);
            assert_eq!(plan.attempts, failed_before + 1, "{code}");
            if last {
                assert_eq!(reason(&plan), Some(DeadReason::RetriesExhausted), "{code}");
                assert_eq!(plan.finish.as_ref().unwrap().status(), crate::fate::Status::Dead);
            } else {
                match plan.outcome {
                    Outcome::RetryLater { delay } if code == 45011 => assert!(delay >= Duration::from_secs(60)),
                    Outcome::RetryLater { .. } => {}
                    ref o => panic!("{code}: {o:?}"),
                }
            }
        }
        // Daily quota: waits, never counted, never exhausted.
        let plan = refused(&f, 45009);
        assert_eq!(
            plan.outcome,
            Outcome::RetryLater {
                delay: p.daily_quota_delay
            }
        );
        assert_eq!(plan.attempts, failed_before);
        // Permanent: dead at once with its errcode, whatever the attempt.
        for code in [41001, 40003, 40037, 43004, 43101, 47003, 48001, 50002] {
            let plan = refused(&f, code);
            match &plan.outcome {
                Outcome::DeadLetter(d) => {
                    assert_eq!(d.reason, DeadReason::PermanentError);
                    assert_eq!(d.errcode, Some(code));
                }
                o => panic!("{code}: {o:?}"),
            }
            assert_eq!(
                plan.finish.as_ref().unwrap().dead_reason(),
                Some(DeadReason::PermanentError)
            );
        }
    }
}

#[test]
fn a_rejected_token_is_replaced_and_the_message_requeued_twice_then_it_waits() {
    let p = policy();
    for code in [40001, 40014, 42001] {
        for token_requeues in 0..5 {
            let f = Facts {
                token_requeues,
                failed_before: 3,
                ..facts(Api::Template)
            };
            let plan = refused(&f, code);
            // The rule fixed in 6f396a0: the token is replaced on every rejection.
            assert_eq!(plan.replace_token, Some(7), "{code} after {token_requeues} requeues");
            if token_requeues < p.token_requeues {
                assert_eq!(plan.outcome, Outcome::Requeue);
                assert_eq!(plan.attempts, 3, "a requeue uses no attempt");
            } else {
                assert!(matches!(plan.outcome, Outcome::RetryLater { .. }), "{:?}", plan.outcome);
                assert_eq!(plan.attempts, 4);
            }
        }
    }
}

#[test]
fn unknown_outcome_template_retries_in_doubt_subscribe_is_ambiguous_at_once() {
    let unknown = Answer::Unknown {
        error: "timed out".into(),
    };
    let t = answered(&facts(Api::Template), unknown.clone());
    assert!(matches!(t.outcome, Outcome::RetryLater { .. }));
    assert_eq!(t.finish.unwrap().doubt(), Doubt::MayHaveArrived);

    let s = answered(&facts(Api::Subscribe), unknown);
    assert_eq!(reason(&s), Some(DeadReason::Ambiguous));
    assert_eq!(
        s.finish.unwrap().doubt(),
        Doubt::MayHaveArrived,
        "the dead row keeps its doubt"
    );

    // Never sent at all: a plain transient failure, no doubt, for both.
    for api in [Api::Template, Api::Subscribe] {
        let n = answered(
            &facts(api),
            Answer::NotSent {
                error: "refused".into(),
            },
        );
        assert!(matches!(n.outcome, Outcome::RetryLater { .. }));
        assert_eq!(n.finish.unwrap().doubt(), Doubt::Settled);
    }
}

#[test]
fn doubt_against_the_window_for_each_api() {
    let p = policy();
    let ages = [
        Duration::ZERO,
        Duration::from_secs(60),
        p.dedup_window,
        p.dedup_window + Duration::from_secs(1),
        Duration::from_secs(3600),
    ];
    for step_claimed in [true, false] {
        for age in ages {
            for api in [Api::Template, Api::Subscribe] {
                let f = Facts {
                    in_doubt_for: Some(age),
                    ..facts(api)
                };
                let v = if step_claimed {
                    stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &p)
                } else {
                    stop_before_send(&f, Gate::BeforeSend, &p)
                };
                let resend = api == Api::Template && age <= p.dedup_window;
                if resend {
                    assert_eq!(v, None, "{api:?} {age:?}");
                } else {
                    let plan = done(v);
                    assert_eq!(reason(&plan), Some(DeadReason::Ambiguous), "{api:?} {age:?}");
                    assert_eq!(plan.finish.unwrap().status(), crate::fate::Status::Dead);
                }
            }
        }
    }
    // Not in doubt: send, for both.
    for api in [Api::Template, Api::Subscribe] {
        assert_eq!(stop_before_send(&facts(api), Gate::BeforeSend, &p), None);
    }
}

#[test]
fn replays_reopen_but_only_ambiguous_by_name_clears_the_doubt() {
    let at: DateTime<Utc> = "2026-11-22T08:00:00Z".parse().unwrap();
    let row = |dead: &str, by: Option<&str>| ReplayRow {
        dead_reason: dead.into(),
        by_reason: by.map(Into::into),
        replayed_at: at,
    };
    assert_eq!(
        reopen(None),
        Reopen::No,
        "a forged replay header is an ordinary duplicate"
    );
    assert_eq!(
        reopen(Some(&row("ambiguous", Some("ambiguous")))),
        Reopen::ClearDoubtBefore(at)
    );
    assert_eq!(reopen(Some(&row("ambiguous", None))), Reopen::KeepDoubt, "--all");
    assert_eq!(reopen(Some(&row("retries_exhausted", None))), Reopen::KeepDoubt);
    assert_eq!(
        reopen(Some(&row("retries_exhausted", Some("retries_exhausted")))),
        Reopen::KeepDoubt
    );
}

#[test]
fn claim_results() {
    let p = policy();
    let f = facts(Api::Template);
    assert_eq!(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &p), None);
    let fin = done(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Final), &p));
    assert_eq!((fin.outcome, fin.finish), (Outcome::Ack, None));
    let held = done(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Held), &p));
    assert_eq!(held.outcome, Outcome::RetryLater { delay: p.hold_delay });
    assert_eq!((held.finish, held.attempts), (None, 0), "a held copy uses no attempt");
    let refused = done(stop_before_send(
        &f,
        Gate::Claimed(&ClaimSeen::Refused("0x00".into())),
        &p,
    ));
    assert_eq!(reason(&refused), Some(DeadReason::InvalidEvent));
    assert_eq!(refused.finish, None);
}

#[test]
fn a_retry_copy_that_no_longer_renders_ends_dead_with_its_row() {
    let f = Facts {
        render_error: Some("template #1: thing1: too long".into()),
        failed_before: 2,
        ..facts(Api::Template)
    };
    let plan = done(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &policy()));
    assert_eq!(reason(&plan), Some(DeadReason::RenderFailed));
    assert_eq!(plan.finish.unwrap().dead_reason(), Some(DeadReason::RenderFailed));
}

#[test]
fn a_message_at_the_delivery_limit_ends_dead_with_its_row() {
    let p = policy();
    let f = Facts {
        redeliveries: p.delivery_limit - 1,
        ..facts(Api::Template)
    };
    let plan = done(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &p));
    assert_eq!(reason(&plan), Some(DeadReason::DeliveryLimit));
    assert!(plan.finish.is_some());
    let below = Facts {
        redeliveries: p.delivery_limit - 2,
        ..facts(Api::Template)
    };
    assert_eq!(stop_before_send(&below, Gate::Claimed(&ClaimSeen::Owned), &p), None);
}

#[test]
fn no_token_database_and_daily_quota_use_no_attempt() {
    let p = policy();
    let f = Facts {
        failed_before: 7,
        ..facts(Api::Template)
    };
    let db = judge(&f, Step::NoToken(&TokenError::Db("down".into())), &p);
    assert!(matches!(db.outcome, Outcome::RetryLater { .. }));
    assert_eq!(db.attempts, 7);
    let quota = TokenError::DailyQuota {
        app_id: "wx1".into(),
        until: f.now + chrono::TimeDelta::hours(3),
    };
    let q = judge(&f, Step::NoToken(&quota), &p);
    assert_eq!(
        q.outcome,
        Outcome::RetryLater {
            delay: p.daily_quota_delay
        }
    );
    assert_eq!(q.attempts, 7);
    // Transient token trouble counts, and the last attempt is exhausted.
    let t = TokenError::Transient {
        app_id: "wx1".into(),
        message: "-1".into(),
    };
    assert_eq!(
        reason(&judge(&f, Step::NoToken(&t), &p)),
        Some(DeadReason::RetriesExhausted)
    );
    // A credentials block waits until it ends (at least 30 s), counted.
    let blocked = TokenError::Blocked {
        app_id: "wx1".into(),
        reason: "credentials rejected".into(),
        until: f.now + chrono::TimeDelta::seconds(300),
        credentials: true,
    };
    let b = judge(
        &Facts {
            failed_before: 0,
            ..f.clone()
        },
        Step::NoToken(&blocked),
        &p,
    );
    match b.outcome {
        Outcome::RetryLater { delay } => assert!(delay >= Duration::from_secs(300)),
        o => panic!("{o:?}"),
    }
    assert_eq!(b.attempts, 1);
}

#[test]
fn a_failed_dead_letter_publish_hands_back_the_claim_keeping_attempt_and_doubt() {
    let p = policy();
    let f = facts(Api::Subscribe);
    let dead = answered(
        &f,
        Answer::Unknown {
            error: "timed out".into(),
        },
    );
    let back = judge(&f, Step::DeadLetterFailed(&dead), &p);
    assert_eq!(back.outcome, Outcome::Release);
    let finish = back.finish.unwrap();
    assert_eq!(finish.status(), crate::fate::Status::Retrying);
    assert_eq!(
        finish.doubt(),
        Doubt::MayHaveArrived,
        "the released claim stays in doubt"
    );
    assert_eq!(back.attempts, f.failed_before);
    // An early reject has no row: nothing to record, the message goes back.
    let early = reject(DeadReason::InvalidEvent, "not JSON", 0);
    let back = judge(&f, Step::DeadLetterFailed(&early), &p);
    assert_eq!((back.outcome, back.finish), (Outcome::Release, None));
}

#[test]
fn dead_letter_errors_are_one_bounded_line() {
    let long = format!("a\nb\0c{}", "é".repeat(2000));
    let plan = reject(DeadReason::InvalidEvent, &long, 0);
    match plan.outcome {
        Outcome::DeadLetter(d) => {
            assert!(!d.error.contains(['\n', '\0']));
            assert_eq!(d.error.chars().count(), crate::fate::ERROR_TEXT_MAX);
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_quota_block_found_by_another_process_uses_no_attempt() {
    let p = policy();
    let f = Facts {
        failed_before: 7,
        ..facts(Api::Template)
    };
    let quota = TokenError::Blocked {
        app_id: "wx1".into(),
        reason: "daily token quota used up (45009)".into(),
        until: f.now + chrono::TimeDelta::hours(5),
        credentials: false,
    };
    let plan = judge(&f, Step::NoToken(&quota), &p);
    assert_eq!(
        plan.outcome,
        Outcome::RetryLater {
            delay: p.daily_quota_delay
        }
    );
    assert_eq!(plan.attempts, 7, "45009 defers, found here or by another process");
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn a_due_delivery_goes_waits_out_quiet_hours_or_expires() {
    let quiet: QuietHours = "22:00-08:00".parse().unwrap();
    // 23:00 Beijing is 15:00 UTC; the window ends at 08:00 Beijing, 00:00 UTC.
    let late = at("2026-11-22T15:00:00Z");
    assert_eq!(due(None, None, late), DueFate::Released);
    assert_eq!(
        due(None, Some(quiet), late),
        DueFate::Deferred(at("2026-11-23T00:00:00Z"))
    );
    assert_eq!(due(None, Some(quiet), at("2026-11-22T04:00:00Z")), DueFate::Released);
    // Cannot go out before not_after any more: expired, now, not at 08:00.
    assert_eq!(
        due(Some(at("2026-11-22T16:00:00Z")), Some(quiet), late),
        DueFate::Expired
    );
    assert_eq!(due(Some(at("2026-11-22T14:59:59Z")), None, late), DueFate::Expired);
    assert_eq!(due(Some(late), None, late), DueFate::Released);
}

#[test]
fn a_copy_past_not_after_ends_expired_without_a_send_or_dead_letter() {
    let mut f = facts(Api::Template);
    f.not_after = Some(at("2026-11-22T07:00:00Z"));
    let p = done(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &policy()));
    assert_eq!(p.outcome, Outcome::Ack);
    assert_eq!(
        p.finish.as_ref().map(Finish::status),
        Some(crate::fate::Status::Expired)
    );
    // Before not_after it goes.
    f.not_after = Some(at("2026-11-22T09:00:00Z"));
    assert!(stop_before_send(&f, Gate::BeforeSend, &policy()).is_none());
}

#[test]
fn a_copy_in_quiet_hours_waits_without_using_an_attempt() {
    let mut f = facts(Api::Template);
    f.failed_before = 3;
    f.quiet_hours = Some("15:00-17:00".parse().unwrap()); // 08:00Z is 16:00 Beijing
    let p = done(stop_before_send(&f, Gate::BeforeSend, &policy()));
    assert_eq!(
        p.outcome,
        Outcome::RetryLater {
            delay: Duration::from_secs(3600)
        }
    );
    assert_eq!(p.attempts, 3);
    assert_eq!(
        p.finish.as_ref().map(Finish::status),
        Some(crate::fate::Status::Retrying)
    );
}

#[test]
fn a_template_message_to_someone_who_left_is_suppressed_a_subscribe_message_is_not() {
    let mut f = facts(Api::Template);
    f.unfollowed = true;
    let p = done(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &policy()));
    assert_eq!(p.outcome, Outcome::Ack, "no dead letter");
    assert_eq!(
        p.finish.as_ref().map(Finish::status),
        Some(crate::fate::Status::Suppressed)
    );
    // Mini-program users do not follow an account: subscribe messages go.
    let mut f = facts(Api::Subscribe);
    f.unfollowed = true;
    assert!(stop_before_send(&f, Gate::Claimed(&ClaimSeen::Owned), &policy()).is_none());
}

#[test]
fn a_43004_to_a_template_message_means_the_user_left() {
    let refused = |errcode| Answer::Refused {
        errcode,
        errmsg: "require subscribe".into(),
    };
    assert!(left_the_account(Api::Template, &refused(43004)));
    assert!(!left_the_account(Api::Subscribe, &refused(43004)));
    assert!(!left_the_account(Api::Template, &refused(43101)));
    assert!(!left_the_account(Api::Template, &Answer::Accepted { msgid: Some(1) }));
}

#[test]
fn a_copy_of_a_cancelled_delivery_is_recorded_cancelled_and_acked_never_sent() {
    let by = CancelledBy {
        event_id: "evt-cancel".into(),
        event_type: "booking.cancelled".into(),
    };
    for api in [Api::Template, Api::Subscribe] {
        // Even a replay of a delivery in doubt, or one out of deliveries: nothing goes.
        let f = Facts {
            cancelled_by: Some(by.clone()),
            in_doubt_for: Some(Duration::from_secs(1)),
            redeliveries: 100,
            ..facts(api)
        };
        for gate in [Gate::Claimed(&ClaimSeen::Owned), Gate::BeforeSend] {
            let p = done(stop_before_send(&f, gate, &policy()));
            assert_eq!(p.outcome, Outcome::Ack, "no dead letter");
            assert_eq!(p.finish, Some(Finish::Cancelled(by.clone())));
            assert_eq!(p.attempts, 0);
        }
    }
    let f = Finish::Cancelled(by);
    assert_eq!(f.error().as_deref(), Some("cancelled by booking.cancelled evt-cancel"));
    assert_eq!(f.cancelled_by(), Some("evt-cancel"));
}

#[test]
fn a_subscribe_message_without_consent_is_suppressed_unless_its_accept_may_be_on_its_way() {
    let missing = |blocked, age_secs| Facts {
        consent: ConsentSeen::Missing {
            blocked,
            age: Duration::from_secs(age_secs),
        },
        ..facts(Api::Subscribe)
    };
    let suppressed = done(stop_before_send(&missing(false, 60), Gate::BeforeSend, &policy()));
    assert_eq!(suppressed.outcome, Outcome::Ack, "no dead letter, no send");
    assert_eq!(suppressed.finish, Some(Finish::Suppressed(Suppressed::NoConsent)));
    assert_eq!(
        suppressed.finish.as_ref().and_then(Finish::error).as_deref(),
        Some("no subscription consent")
    );
    // A booking made a moment ago: its accept may still be on its way, so it looks again,
    // without using an attempt.
    let young = done(stop_before_send(&missing(false, 2), Gate::BeforeSend, &policy()));
    assert_eq!(
        young.outcome,
        Outcome::RetryLater {
            delay: Duration::from_secs(1)
        }
    );
    assert_eq!(
        (young.attempts, young.finish.as_ref().map(Finish::status)),
        (0, Some(crate::fate::Status::Retrying))
    );
    // Switched off in the settings: no accept is coming.
    let blocked = done(stop_before_send(&missing(true, 0), Gate::BeforeSend, &policy()));
    assert_eq!(blocked.finish, Some(Finish::Suppressed(Suppressed::NoConsent)));
    // With a credit, or untracked: sent.
    for consent in [ConsentSeen::Taken, ConsentSeen::NotTracked] {
        let f = Facts {
            consent,
            ..facts(Api::Subscribe)
        };
        assert!(stop_before_send(&f, Gate::BeforeSend, &policy()).is_none());
    }
    // An expired delivery ends expired, whatever its consent.
    let expired = Facts {
        not_after: Some("2026-11-22T07:00:00Z".parse().unwrap()),
        ..missing(false, 60)
    };
    let p = done(stop_before_send(&expired, Gate::BeforeSend, &policy()));
    assert_eq!(
        p.finish.as_ref().map(Finish::status),
        Some(crate::fate::Status::Expired)
    );
}
