//! Property: over many escrows at once, random moves (each sent twice at the same moment),
//! duplicated provider webhooks and kill -9 of the real `workers` binary end exactly where a
//! single-threaded model of the state machine says, with the money right: every ledger
//! transaction sums to zero, a released or refunded escrow's account nets to zero, payouts plus
//! the fee make the amount, and the provider made each transfer and each refund once.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Workers, stripe_env};
use groundcrew_jobs::{
    escrow::{
        EscrowSettings, Role, State,
        machine::{self, Attribution, Leg, TransitionError},
        store::{self, Actor, MoveError, NewEscrow},
        stripe::StripeClient,
    },
    webhooks::{self, Incoming, Provider},
};
use groundcrew_testkit::{
    TestEnv, eventually,
    stripe::{FakeStripe, SECRET_KEY, payment_intent_event},
};
use proptest::prelude::*;
use uuid::Uuid;

/// Long enough for a release (several provider calls) after a crash's lease runs out.
const SETTLED_WITHIN: Duration = Duration::from_secs(60);
/// The roles people act in; the system and the provider move escrows only through our jobs.
const PEOPLE: [Role; 3] = [Role::Sponsor, Role::Influencer, Role::Admin];
const PAYMENT_EVENTS: [&str; 4] = [
    "payment_intent.processing",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
];

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A provider event, delivered twice at once.
    Pay(usize),
    /// The `n`th move the model allows a person from the current state (if any), sent twice.
    Advance(usize),
    /// Any target and role, allowed or not, sent twice.
    Attempt(State, Role),
}

#[derive(Clone, Debug)]
struct Deal {
    amount_cents: i64,
    sponsor_referred: bool,
    influencer_referred: bool,
    ops: Vec<Op>,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly payments that go through, so most escrows get as far as the money moves.
        2 => prop_oneof![3 => Just(1usize), 2 => Just(0), 1 => Just(2), 1 => Just(3)].prop_map(Op::Pay),
        5 => any::<usize>().prop_map(Op::Advance),
        1 => (proptest::sample::select(State::ALL.to_vec()), proptest::sample::select(PEOPLE.to_vec()))
            .prop_map(|(to, role)| Op::Attempt(to, role)),
    ]
}

fn deal() -> impl Strategy<Value = Deal> {
    (
        100i64..=1_000_000,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(op(), 1..16),
    )
        .prop_map(
            |(amount_cents, sponsor_referred, influencer_referred, ops)| Deal {
                amount_cents,
                sponsor_referred,
                influencer_referred,
                ops,
            },
        )
}

/// The single-threaded model: the machine applied to one escrow, one move at a time.
#[derive(Clone, Copy, Debug)]
struct Model {
    state: State,
    funded: bool,
}

impl Model {
    /// Where a move leaves the escrow once our own jobs have carried on from it.
    fn moved(&mut self, to: State) {
        self.state = match to {
            State::WorkSubmitted => State::UnderReview,
            State::Approved | State::Releasing => State::Released,
            State::Refunding => State::Refunded,
            other => other,
        };
        self.funded |= to == State::Locked;
    }

    /// A payment event: the payment states on the way to its outcome, as far as they apply.
    fn pay(&mut self, event_type: &str) {
        let path: &[State] = match event_type {
            "payment_intent.processing" => &[State::PaymentProcessing],
            "payment_intent.succeeded" => &[State::PaymentProcessing, State::Locked],
            "payment_intent.payment_failed" => &[State::PaymentProcessing, State::Failed],
            _ => &[State::Cancelled],
        };
        for &to in path {
            if machine::check(self.state, to, Role::Provider).is_ok() {
                self.moved(to);
            }
        }
    }

    fn people_moves(&self) -> Vec<(State, Role)> {
        State::ALL
            .into_iter()
            .flat_map(|to| PEOPLE.map(|role| (to, role)))
            .filter(|&(to, role)| machine::check(self.state, to, role).is_ok())
            .collect()
    }

    /// What the escrow's account holds: the amount while funded and not yet paid out or back.
    fn held(&self, amount_cents: i64) -> i64 {
        let paid_out = matches!(self.state, State::Released | State::Refunded);
        if self.funded && !paid_out {
            amount_cents
        } else {
            0
        }
    }
}

struct Parties {
    sponsor: Uuid,
    influencer: Uuid,
    admin: Uuid,
    who: Attribution<Uuid>,
}

impl Parties {
    fn actor(&self, role: Role) -> Actor {
        let user_id = match role {
            Role::Sponsor => self.sponsor,
            Role::Influencer => self.influencer,
            _ => self.admin,
        };
        Actor {
            role,
            user_id: Some(user_id),
        }
    }
}

/// A user with a payout account, so legs to them are paid at once.
async fn payee(env: &TestEnv) -> Uuid {
    let id = env.user().await;
    let mut tx = env.services.begin().await.expect("begin");
    store::set_payout_account(&mut tx, id, &format!("acct_{}", id.simple()))
        .await
        .expect("payout account");
    tx.commit().await.expect("commit");
    id
}

async fn parties(env: &TestEnv, deal: &Deal) -> Parties {
    let sponsor = env.user().await;
    let influencer = payee(env).await;
    let admin = env.user().await;
    let referred_by = |referred: bool, who: Uuid| async move {
        if !referred {
            return None;
        }
        let agent = payee(env).await;
        let mut conn = env.services.db.acquire().await.expect("conn");
        store::refer(&mut conn, agent, who).await.expect("referral");
        Some(agent)
    };
    let sponsor_agent = referred_by(deal.sponsor_referred, sponsor).await;
    let influencer_agent = referred_by(deal.influencer_referred, influencer).await;
    Parties {
        sponsor,
        influencer,
        admin,
        who: Attribution {
            sponsor_agent,
            influencer_agent,
        },
    }
}

async fn state(env: &TestEnv, id: Uuid) -> State {
    let mut conn = env.services.db.acquire().await.expect("conn");
    store::get(&mut conn, id)
        .await
        .expect("get")
        .expect("escrow")
        .state
}

async fn payment_intent(env: &TestEnv, id: Uuid) -> String {
    eventually(SETTLED_WITHIN, "the PaymentIntent", || async move {
        let mut conn = env.services.db.acquire().await.expect("conn");
        store::get(&mut conn, id)
            .await
            .expect("get")?
            .payment_intent_id
    })
    .await
}

/// One move attempt in its own transaction, as a route makes it.
async fn attempt(env: &TestEnv, id: Uuid, to: State, actor: Actor) -> Result<(), TransitionError> {
    let mut tx = env.services.begin().await.expect("begin");
    match store::transition(&mut tx, &env.services.escrow, id, to, actor, None).await {
        Ok(_) => {
            tx.commit().await.expect("commit");
            Ok(())
        }
        Err(MoveError::Transition(e)) => Err(e),
        Err(e) => panic!("move {to:?}: {e}"),
    }
}

async fn deliver(env: &TestEnv, event_id: &str, event_type: &str, intent: &str, id: Uuid) {
    let body = payment_intent_event(event_id, event_type, intent, &id.to_string());
    let incoming = Incoming::parse(Provider::Stripe, body.as_bytes(), None).expect("event");
    webhooks::receive(&env.services, incoming, None)
        .await
        .expect("receive");
}

/// Plays one deal's operations against the platform and the model, waiting after each for
/// our jobs to reach what the model says; returns the model's end.
async fn play(env: &TestEnv, case: u64, deal_no: usize, deal: Deal) -> (Uuid, Model, Parties) {
    let parties = parties(env, &deal).await;
    let mut tx = env.services.begin().await.expect("begin");
    let escrow = store::create(
        &mut tx,
        NewEscrow {
            deal_id: &format!("deal-{case}-{deal_no}-{}", Uuid::now_v7()),
            sponsor_id: parties.sponsor,
            influencer_id: parties.influencer,
            amount_cents: deal.amount_cents,
            currency: "usd",
        },
    )
    .await
    .expect("create");
    tx.commit().await.expect("commit");
    let id = escrow.id;
    let intent = payment_intent(env, id).await;
    let mut model = Model {
        state: State::PendingPayment,
        funded: false,
    };

    for (op_no, op) in deal.ops.into_iter().enumerate() {
        match op {
            Op::Pay(event) => {
                let event_type = PAYMENT_EVENTS[event];
                let event_id = format!("evt_{}_{op_no}", id.simple());
                tokio::join!(
                    deliver(env, &event_id, event_type, &intent, id),
                    deliver(env, &event_id, event_type, &intent, id),
                );
                eventually(SETTLED_WITHIN, "the event to be processed", || {
                    let event_id = event_id.clone();
                    async move {
                        sqlx::query_scalar::<_, bool>(
                            "SELECT processed_at IS NOT NULL FROM webhook_inbox
                             WHERE provider = 'stripe' AND event_id = $1",
                        )
                        .bind(event_id)
                        .fetch_one(&env.services.db)
                        .await
                        .expect("inbox")
                        .then_some(())
                    }
                })
                .await;
                model.pay(event_type);
            }
            Op::Advance(_) | Op::Attempt(..) => {
                let (to, role) = match op {
                    Op::Attempt(to, role) => (to, role),
                    Op::Advance(n) => match model.people_moves() {
                        moves if moves.is_empty() => continue,
                        moves => moves[n % moves.len()],
                    },
                    Op::Pay(_) => unreachable!(),
                };
                let actor = parties.actor(role);
                let (a, b) = tokio::join!(attempt(env, id, to, actor), attempt(env, id, to, actor));
                match machine::check(model.state, to, role) {
                    Ok(()) => {
                        assert!(
                            a.is_ok() != b.is_ok(),
                            "{:?} → {to:?} by {role:?} twice at once: exactly one moves ({a:?}, {b:?})",
                            model.state
                        );
                        model.moved(to);
                    }
                    Err(expected) => {
                        assert_eq!(a, Err(expected));
                        assert_eq!(b, Err(expected));
                    }
                }
            }
        }
        let expected = model.state;
        eventually(SETTLED_WITHIN, expected.as_str(), || async move {
            (state(env, id).await == expected).then_some(())
        })
        .await;
    }
    (id, model, parties)
}

/// The money of one finished deal: the account, the payout legs and their transfers.
async fn check_money(env: &TestEnv, id: Uuid, amount_cents: i64, model: Model, parties: &Parties) {
    let held: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount_cents), 0)::int8 FROM ledger_entries WHERE account = $1",
    )
    .bind(format!("escrow:{id}"))
    .fetch_one(&env.services.db)
    .await
    .expect("account");
    assert_eq!(
        held,
        model.held(amount_cents),
        "escrow account of {id} ({:?})",
        model.state
    );

    let mut conn = env.services.db.acquire().await.expect("conn");
    let mut payouts: Vec<(String, Option<Uuid>, i64)> = store::payouts(&mut conn, id)
        .await
        .expect("payouts")
        .into_iter()
        .map(|p| {
            let to_person = p.party != "platform";
            assert_eq!(
                p.status,
                if to_person { "paid" } else { "kept" },
                "leg {p:?} of {id}"
            );
            assert_eq!(p.transfer_id.is_some(), to_person, "leg {p:?} of {id}");
            (p.party, p.user_id, p.amount_cents)
        })
        .collect();
    let mut expected: Vec<(String, Option<Uuid>, i64)> = if model.state == State::Released {
        machine::split(amount_cents, parties.who)
            .into_iter()
            .map(|leg| match leg {
                Leg::Influencer(a) => ("influencer".to_owned(), Some(parties.influencer), a),
                Leg::Agent(agent, a) => ("agent".to_owned(), Some(agent), a),
                Leg::Platform(a) => ("platform".to_owned(), None, a),
            })
            .collect()
    } else {
        Vec::new()
    };
    payouts.sort();
    expected.sort();
    assert_eq!(payouts, expected, "payout legs of {id}");
    if model.state == State::Released {
        assert_eq!(payouts.iter().map(|p| p.2).sum::<i64>(), amount_cents);
    }
}

/// The provider made one transfer per person's leg and one refund per refunded escrow, over
/// every case so far; and no ledger transaction is unbalanced.
async fn check_provider(env: &TestEnv, stripe: &FakeStripe) {
    let db = &env.services.db;
    let legs: Vec<String> = sqlx::query_scalar(
        "SELECT transfer_id FROM escrow_payouts WHERE party <> 'platform' ORDER BY transfer_id",
    )
    .fetch_all(db)
    .await
    .expect("legs");
    let mut transfers: Vec<String> = stripe.transfers().into_iter().map(|t| t.id).collect();
    transfers.sort();
    assert_eq!(
        transfers, legs,
        "one transfer per leg, each recorded on its leg"
    );
    let refunded: i64 = sqlx::query_scalar("SELECT count(*) FROM escrows WHERE state = 'refunded'")
        .fetch_one(db)
        .await
        .expect("refunded");
    assert_eq!(
        stripe.refunds().len() as i64,
        refunded,
        "one refund per refunded escrow"
    );
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries
         GROUP BY transaction_id HAVING sum(amount_cents) <> 0) t",
    )
    .fetch_one(db)
    .await
    .expect("ledger");
    assert_eq!(unbalanced, 0, "every ledger transaction sums to zero");
}

const POOLS: [(&str, usize); 2] = [("escrow", 8), ("verification", 4)];

async fn run_case(
    env: &TestEnv,
    stripe: &FakeStripe,
    workers: &Mutex<Option<Workers>>,
    case: u64,
    deals: Vec<Deal>,
    crashes_after_ms: Vec<u64>,
) {
    // Kill -9 the workers at the given moments of the case and start a fresh process.
    let crasher = async {
        let mut crashes = crashes_after_ms;
        crashes.sort_unstable();
        let started = tokio::time::Instant::now();
        for at in crashes {
            tokio::time::sleep_until(started + Duration::from_millis(at)).await;
            let old = workers.lock().expect("workers").take();
            if let Some(old) = old {
                old.kill_9();
            }
            *workers.lock().expect("workers") =
                Some(Workers::start_pools(env, &POOLS, stripe_env(stripe)));
        }
    };
    let plays = futures::future::join_all(
        deals
            .iter()
            .cloned()
            .enumerate()
            .map(|(no, deal)| play(env, case, no, deal)),
    );
    let (ends, ()) = tokio::join!(plays, crasher);
    for ((id, model, parties), deal) in ends.iter().zip(&deals) {
        check_money(env, *id, deal.amount_cents, *model, parties).await;
    }
    check_provider(env, stripe).await;
}

#[test]
fn concurrent_moves_duplicate_webhooks_and_crashes_end_as_the_model_says() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // One database, provider and worker process for every case: each case has its own users
    // and escrows, and the money checks hold over everything so far.
    let (mut env, stripe) = rt.block_on(async {
        let env = TestEnv::with(|s| {
            s.lease = Duration::from_secs(1);
            s.shutdown_grace = Duration::from_secs(1);
        })
        .await;
        (env, FakeStripe::start().await)
    });
    env.services.escrow = Arc::new(EscrowSettings {
        review_window: EscrowSettings::DEFAULT_REVIEW_WINDOW,
        stripe: StripeClient::new(stripe.base_url(), Some(SECRET_KEY.to_owned())),
        stripe_webhook_secret: None,
    });
    let workers = Mutex::new(Some(Workers::start_pools(
        &env,
        &POOLS,
        stripe_env(&stripe),
    )));
    let case = std::sync::atomic::AtomicU64::new(0);
    let config = ProptestConfig {
        cases: 8,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        deals in proptest::collection::vec(deal(), 2..7),
        crashes in proptest::collection::vec(0u64..4_000, 0..3),
    )| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        rt.block_on(run_case(&env, &stripe, &workers, case, deals, crashes));
    });
    drop(workers);
    rt.block_on(async move {
        drop(stripe);
        drop(env);
    });
}
