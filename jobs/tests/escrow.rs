//! The escrow family against real Postgres and Redis and a local fake Stripe: the transition
//! table, the split table, funding by webhook (out of order included), release with its
//! transfers and ledger, a leg waiting for a payout account, refunds, auto-approval, and the
//! ledger's append-only and balance rules enforced by the database.

mod escrow_common;

use std::time::Duration;

use escrow_common::Market;
use groundcrew_jobs::{
    JobTx,
    escrow::{
        AutoApprove, Role, State,
        machine::{self, Attribution, Leg, TransitionError},
        store::{self, Actor, MoveError},
    },
    webhooks::Received,
};
use sqlx::Row;
use uuid::Uuid;

/// DESIGN.md § escrow and API.md "Who moves what", written out independently of the code.
fn expected_roles(from: State, to: State) -> Option<Vec<Role>> {
    use Role::*;
    use State::*;
    let roles = match (from, to) {
        (PendingPayment, PaymentProcessing)
        | (PendingPayment, Cancelled)
        | (PaymentProcessing, Locked)
        | (PaymentProcessing, Failed) => vec![Provider],
        (Locked, WorkInProgress) | (WorkInProgress, WorkSubmitted) | (Rejected, WorkInProgress) => {
            vec![Influencer]
        }
        (WorkInProgress, Disputed)
        | (WorkInProgress, Refunding)
        | (UnderReview, Rejected)
        | (UnderReview, Disputed) => vec![Sponsor],
        (UnderReview, Approved) => vec![Sponsor, System],
        (Rejected, Disputed) => vec![Sponsor, Influencer],
        (WorkSubmitted, UnderReview)
        | (Approved, Releasing)
        | (Releasing, Released)
        | (Refunding, Refunded) => vec![System],
        (Disputed, Releasing) | (Disputed, Refunding) => vec![Admin],
        _ => return None,
    };
    Some(roles)
}

#[tokio::test]
async fn every_state_target_and_role_gives_the_documented_outcome() {
    let market = Market::new().await;
    let (sponsor, influencer) = (market.user().await, market.user().await);
    let id = market.create(sponsor, influencer, 11_000).await;
    let mut checked = 0;
    for from in State::ALL {
        for to in State::ALL {
            for role in Role::ALL {
                let mut tx = market.env.services.begin().await.expect("begin");
                sqlx::query("UPDATE escrows SET state = $2 WHERE id = $1")
                    .bind(id)
                    .bind(from.as_str())
                    .execute(tx.conn())
                    .await
                    .expect("set state");
                let actor = Actor {
                    role,
                    user_id: None,
                };
                let outcome =
                    store::transition(&mut tx, &market.env.services.escrow, id, to, actor, None)
                        .await;
                let case = format!("{} → {} by {}", from.as_str(), to.as_str(), role.as_str());
                match (expected_roles(from, to), outcome) {
                    (None, Err(MoveError::Transition(TransitionError::Invalid { .. }))) => {}
                    (
                        Some(roles),
                        Err(MoveError::Transition(TransitionError::Forbidden { .. })),
                    ) if !roles.contains(&role) => {}
                    (Some(roles), Ok(escrow)) if roles.contains(&role) => {
                        // Submitting work hands it to review at once (the system's move).
                        let landed = if to == State::WorkSubmitted {
                            State::UnderReview
                        } else {
                            to
                        };
                        assert_eq!(escrow.state, landed, "{case}");
                        let history: Vec<(String, String, String)> = sqlx::query_as(
                            "SELECT from_state, to_state, actor FROM escrow_history
                             WHERE escrow_id = $1 ORDER BY id LIMIT 1",
                        )
                        .bind(id)
                        .fetch_all(tx.conn())
                        .await
                        .expect("history");
                        assert_eq!(
                            history,
                            vec![(
                                from.as_str().to_owned(),
                                to.as_str().to_owned(),
                                role.as_str().to_owned()
                            )],
                            "{case}: one history row with the actor"
                        );
                    }
                    (expected, outcome) => {
                        panic!("{case}: expected roles {expected:?}, got {outcome:?}")
                    }
                }
                tx.rollback().await.expect("rollback");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 15 * 15 * 5);
}

#[test]
fn the_split_matches_the_api_for_every_amount_and_referral_case() {
    let (s, i) = (1u8, 2u8);
    let cases = [
        (
            "none",
            Attribution {
                sponsor_agent: None,
                influencer_agent: None,
            },
        ),
        (
            "one agent for both",
            Attribution {
                sponsor_agent: Some(s),
                influencer_agent: Some(s),
            },
        ),
        (
            "two agents",
            Attribution {
                sponsor_agent: Some(s),
                influencer_agent: Some(i),
            },
        ),
        (
            "sponsor's agent only",
            Attribution {
                sponsor_agent: Some(s),
                influencer_agent: None,
            },
        ),
        (
            "influencer's agent only",
            Attribution {
                sponsor_agent: None,
                influencer_agent: Some(i),
            },
        ),
    ];
    for amount in 100..=1_000_000i64 {
        // floor(amount × 10 / 110) by its definition: the largest fee with fee × 110 ≤ amount × 10.
        let fee = amount * 10 / 110;
        assert!(fee * 110 <= amount * 10 && (fee + 1) * 110 > amount * 10);
        for (name, who) in cases {
            let legs = machine::split(amount, who);
            let expected: Vec<Leg<u8>> = match name {
                "none" => vec![Leg::Influencer(amount - fee), Leg::Platform(fee)],
                "one agent for both" | "sponsor's agent only" => {
                    vec![Leg::Influencer(amount - fee), Leg::Agent(s, fee)]
                }
                "influencer's agent only" => {
                    vec![Leg::Influencer(amount - fee), Leg::Agent(i, fee)]
                }
                _ => vec![
                    Leg::Influencer(amount - fee),
                    Leg::Agent(s, fee / 2),
                    Leg::Agent(i, fee - fee / 2),
                ],
            };
            assert_eq!(legs, expected, "{amount} cents, {name}");
            assert_eq!(
                legs.iter().map(Leg::amount).sum::<i64>(),
                amount,
                "{amount}, {name}"
            );
        }
    }
}

#[tokio::test]
async fn a_deal_is_funded_worked_approved_and_paid_out_with_a_balanced_ledger() {
    let market = Market::new().await;
    let workers = market.env.spawn_workers(Market::pools(4));
    let (sponsor, influencer, agent_s, agent_i) = (
        market.user().await,
        market.user().await,
        market.user().await,
        market.user().await,
    );
    market.refer(agent_s, sponsor).await;
    market.refer(agent_i, influencer).await;
    for user in [influencer, agent_s, agent_i] {
        market.payout_account(user).await;
    }
    let amount = 123_457;
    let id = market.under_review(sponsor, influencer, amount).await;
    assert_eq!(market.state(id).await, State::UnderReview);
    let sponsor_actor = Actor {
        role: Role::Sponsor,
        user_id: Some(sponsor),
    };
    market
        .step(id, State::Approved, sponsor_actor)
        .await
        .expect("approve");
    market.wait_for(id, State::Released).await;

    let fee = amount * 10 / 110;
    let mut transfers: Vec<(String, i64)> = market
        .stripe
        .transfers()
        .into_iter()
        .map(|t| (t.destination, t.amount))
        .collect();
    transfers.sort();
    let mut expected = vec![
        (format!("acct_{}", influencer.simple()), amount - fee),
        (format!("acct_{}", agent_s.simple()), fee / 2),
        (format!("acct_{}", agent_i.simple()), fee - fee / 2),
    ];
    expected.sort();
    assert_eq!(transfers, expected);

    let mut conn = market.env.services.db.acquire().await.expect("conn");
    let payouts = store::payouts(&mut conn, id).await.expect("payouts");
    assert!(
        payouts
            .iter()
            .all(|p| p.status == "paid" && p.transfer_id.is_some())
    );
    assert_eq!(payouts.iter().map(|p| p.amount_cents).sum::<i64>(), amount);
    let ledger = store::ledger(&mut conn, id).await.expect("ledger");
    let kinds: Vec<&str> = ledger.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(kinds, ["funding", "release"]);
    let escrow_account = format!("escrow:{id}");
    let escrow_net: i64 = ledger
        .iter()
        .flat_map(|t| &t.entries)
        .filter(|e| e.account == escrow_account)
        .map(|e| e.amount_cents)
        .sum();
    assert_eq!(escrow_net, 0, "a released escrow's account nets to zero");
    assert_eq!(market.unbalanced_transactions().await, 0);
    let history: Vec<String> = store::history(&mut conn, id)
        .await
        .expect("history")
        .into_iter()
        .map(|h| format!("{}>{}:{}", h.from, h.to, h.actor))
        .collect();
    assert_eq!(
        history,
        [
            "pending_payment>payment_processing:provider",
            "payment_processing>locked:provider",
            "locked>work_in_progress:influencer",
            "work_in_progress>work_submitted:influencer",
            "work_submitted>under_review:system",
            "under_review>approved:sponsor",
            "approved>releasing:system",
            "releasing>released:system",
        ]
    );
    // Both parties hear of every move; each payee gets a receipt by email.
    let notes: Vec<(Uuid, bool)> = sqlx::query(
        "SELECT user_id, email IS NOT NULL AS receipt FROM notifications WHERE category = 'payments'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("notifications")
    .iter()
    .map(|r| (r.get("user_id"), r.get("receipt")))
    .collect();
    assert_eq!(notes.iter().filter(|(u, r)| *u == sponsor && !r).count(), 8);
    assert_eq!(notes.iter().filter(|(_, r)| *r).count(), 3);
    workers.shutdown().await;
}

#[tokio::test]
async fn succeeded_before_processing_ends_locked_and_a_duplicate_changes_nothing() {
    let market = Market::new().await;
    let workers = market.env.spawn_workers(Market::pools(2));
    let (sponsor, influencer) = (market.user().await, market.user().await);
    let id = market.create(sponsor, influencer, 5_000).await;
    assert!(matches!(
        market
            .webhook("evt_1", "payment_intent.succeeded", id)
            .await,
        Received::Queued(_)
    ));
    market.wait_for(id, State::Locked).await;
    assert_eq!(
        market
            .webhook("evt_1", "payment_intent.succeeded", id)
            .await,
        Received::Duplicate
    );
    market
        .webhook("evt_0", "payment_intent.processing", id)
        .await;
    let outcome = groundcrew_testkit::eventually(Duration::from_secs(20), "processed", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT outcome FROM webhook_inbox WHERE event_id = 'evt_0'",
        )
        .fetch_one(&market.env.services.db)
        .await
        .expect("inbox")
    })
    .await;
    assert_eq!(outcome, "stale");
    assert_eq!(market.state(id).await, State::Locked);
    let mut conn = market.env.services.db.acquire().await.expect("conn");
    assert_eq!(
        store::ledger(&mut conn, id).await.expect("ledger").len(),
        1,
        "funded once"
    );
    workers.shutdown().await;
}

#[tokio::test]
async fn a_failed_or_canceled_payment_moves_to_failed_or_cancelled() {
    let market = Market::new().await;
    let workers = market.env.spawn_workers(Market::pools(2));
    let (sponsor, influencer) = (market.user().await, market.user().await);
    let failed = market.create(sponsor, influencer, 5_000).await;
    let canceled = market.create(sponsor, influencer, 5_000).await;
    market
        .webhook("evt_p", "payment_intent.processing", failed)
        .await;
    market.wait_for(failed, State::PaymentProcessing).await;
    market
        .webhook("evt_f", "payment_intent.payment_failed", failed)
        .await;
    market
        .webhook("evt_c", "payment_intent.canceled", canceled)
        .await;
    market.wait_for(failed, State::Failed).await;
    market.wait_for(canceled, State::Cancelled).await;
    assert_eq!(market.stripe.payment_intents(), 2);
    workers.shutdown().await;
}

#[tokio::test]
async fn a_leg_waits_for_its_payout_account_and_is_paid_once_it_exists() {
    let market = Market::new().await;
    let workers = market.env.spawn_workers(Market::pools(2));
    let (sponsor, influencer) = (market.user().await, market.user().await);
    let id = market.under_review(sponsor, influencer, 10_000).await;
    let sponsor_actor = Actor {
        role: Role::Sponsor,
        user_id: Some(sponsor),
    };
    market
        .step(id, State::Approved, sponsor_actor)
        .await
        .expect("approve");
    groundcrew_testkit::eventually(Duration::from_secs(20), "the leg to wait", || async {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM escrow_payouts WHERE escrow_id = $1 AND party = 'influencer'",
        )
        .bind(id)
        .fetch_optional(&market.env.services.db)
        .await
        .expect("leg");
        (status.as_deref() == Some("waiting_account")).then_some(())
    })
    .await;
    assert_eq!(market.state(id).await, State::Releasing);
    assert!(market.stripe.transfers().is_empty());
    market.payout_account(influencer).await;
    market.wait_for(id, State::Released).await;
    let transfers = market.stripe.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0].amount, 10_000 - 909);
    let kept: i64 = sqlx::query_scalar(
        "SELECT amount_cents FROM escrow_payouts WHERE escrow_id = $1 AND party = 'platform'",
    )
    .bind(id)
    .fetch_one(&market.env.services.db)
    .await
    .expect("platform leg");
    assert_eq!(kept, 909, "no agent: the platform keeps the fee");
    workers.shutdown().await;
}

#[tokio::test]
async fn a_refund_goes_through_the_provider_once_and_is_booked() {
    let market = Market::new().await;
    let workers = market.env.spawn_workers(Market::pools(2));
    let (sponsor, influencer) = (market.user().await, market.user().await);
    let id = market.under_review(sponsor, influencer, 7_700).await;
    let sponsor_actor = Actor {
        role: Role::Sponsor,
        user_id: Some(sponsor),
    };
    market
        .step(id, State::Disputed, sponsor_actor)
        .await
        .expect("dispute");
    let admin = Actor {
        role: Role::Admin,
        user_id: None,
    };
    market
        .step(id, State::Refunding, admin)
        .await
        .expect("resolve as refund");
    market.wait_for(id, State::Refunded).await;
    assert_eq!(market.stripe.refunds().len(), 1);
    let mut conn = market.env.services.db.acquire().await.expect("conn");
    let ledger = store::ledger(&mut conn, id).await.expect("ledger");
    assert_eq!(
        ledger.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(),
        ["funding", "refund"]
    );
    assert_eq!(market.unbalanced_transactions().await, 0);
    workers.shutdown().await;
}

#[tokio::test]
async fn work_left_in_review_past_the_window_is_approved_and_released() {
    let market = Market::with_review_window(Duration::ZERO).await;
    let workers = market.env.spawn_workers(Market::pools(2));
    let (sponsor, influencer) = (market.user().await, market.user().await);
    market.payout_account(influencer).await;
    let id = market.under_review(sponsor, influencer, 1_000).await;
    let mut tx = market.env.services.begin().await.expect("begin");
    tx.enqueue(&AutoApprove {}).await.expect("enqueue");
    tx.commit().await.expect("commit");
    market.wait_for(id, State::Released).await;
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM escrow_history WHERE escrow_id = $1 AND to_state = 'approved'",
    )
    .bind(id)
    .fetch_one(&market.env.services.db)
    .await
    .expect("history");
    assert_eq!(reason.as_deref(), Some("review window passed"));
    workers.shutdown().await;
}

#[tokio::test]
async fn the_database_refuses_to_change_or_unbalance_the_ledger() {
    let market = Market::new().await;
    let workers = market.env.spawn_workers(Market::pools(2));
    let (sponsor, influencer) = (market.user().await, market.user().await);
    let id = market.create(sponsor, influencer, 2_000).await;
    market
        .webhook("evt_s", "payment_intent.succeeded", id)
        .await;
    market.wait_for(id, State::Locked).await;
    workers.shutdown().await;
    let db = &market.env.services.db;
    for statement in [
        "UPDATE ledger_entries SET amount_cents = amount_cents + 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET kind = 'refund'",
        "DELETE FROM ledger_transactions",
        "TRUNCATE ledger_entries",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(db)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    let mut tx = JobTx::begin(&market.env.services).await.expect("begin");
    let txn = Uuid::now_v7();
    sqlx::query("INSERT INTO ledger_transactions (id, escrow_id, kind) VALUES ($1, $2, 'refund')")
        .bind(txn)
        .bind(id)
        .execute(tx.conn())
        .await
        .expect("transaction row");
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account, amount_cents) VALUES ($1, 'x', 5)",
    )
    .bind(txn)
    .execute(tx.conn())
    .await
    .expect("entry");
    let err = tx.commit().await.expect_err("an unbalanced transaction");
    assert!(err.to_string().contains("does not balance"), "{err}");
}
