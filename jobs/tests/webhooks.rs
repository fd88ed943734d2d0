//! The webhook inbox against real Postgres and Redis.

use std::time::Duration;

use groundcrew_jobs::{
    Queue,
    webhooks::{Incoming, Provider, Received, receive},
    worker::PoolSpec,
};
use groundcrew_testkit::{TestEnv, eventually};

fn stripe_event(id: &str, kind: &str) -> Incoming {
    let body = format!(r#"{{"id":"{id}","type":"{kind}","data":{{"object":{{}}}}}}"#);
    Incoming::parse(Provider::Stripe, body.as_bytes(), None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_delivered_five_times_concurrently_is_stored_and_processed_once() {
    let env = TestEnv::new().await;
    let deliveries = (0..5).map(|_| {
        let services = env.services.clone();
        tokio::spawn(async move {
            receive(&services, stripe_event("evt_1", "some.unknown_type"), None).await
        })
    });
    let results: Vec<Received> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let queued = results
        .iter()
        .filter(|r| matches!(r, Received::Queued(_)))
        .count();
    assert_eq!(queued, 1, "{results:?}");

    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Verification,
        concurrency: 4,
    }]);
    let outcome: String = eventually(
        Duration::from_secs(10),
        "the event to be processed",
        || async {
            sqlx::query_scalar("SELECT outcome FROM webhook_inbox WHERE processed_at IS NOT NULL")
                .fetch_optional(&env.services.db)
                .await
                .unwrap()
        },
    )
    .await;
    assert_eq!(
        outcome, "ignored",
        "an unknown type is recorded and ignored"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_inbox")
        .fetch_one(&env.services.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    workers.shutdown().await;
}

/// A burst of receipts is written in batches (`ingest`): each distinct event is stored and
/// queued once, each repeat answered as a duplicate, whichever batch the copies land in; and
/// every stored event is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_events_with_repeats_stores_and_processes_each_once() {
    let env = TestEnv::new().await;
    const EVENTS: usize = 300;
    let deliveries = (0..EVENTS * 2).map(|n| {
        let services = env.services.clone();
        // Every event twice, the copies far apart in the burst.
        let event = format!("evt_{}", n % EVENTS);
        tokio::spawn(async move {
            let received = receive(&services, stripe_event(&event, "some.unknown_type"), None)
                .await
                .unwrap();
            (event, received)
        })
    });
    let results: Vec<(String, Received)> = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut queued: Vec<&str> = results
        .iter()
        .filter(|(_, r)| matches!(r, Received::Queued(_)))
        .map(|(event, _)| event.as_str())
        .collect();
    queued.sort_unstable();
    queued.dedup();
    assert_eq!(queued.len(), EVENTS, "each event queued");
    assert_eq!(
        results
            .iter()
            .filter(|(_, r)| *r == Received::Duplicate)
            .count(),
        EVENTS,
        "each repeat a duplicate"
    );

    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Verification,
        concurrency: 16,
    }]);
    eventually(
        Duration::from_secs(30),
        "every event to be processed",
        || async {
            let processed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM webhook_inbox WHERE outcome = 'ignored'")
                    .fetch_one(&env.services.db)
                    .await
                    .unwrap();
            (processed == EVENTS as i64).then_some(())
        },
    )
    .await;
    workers.shutdown().await;
}

#[test]
fn payloads_without_an_event_id_or_type_are_refused() {
    assert!(Incoming::parse(Provider::Stripe, b"not json", None).is_err());
    assert!(Incoming::parse(Provider::Stripe, br#"{"type":"x"}"#, None).is_err());
    assert!(Incoming::parse(Provider::Sports, br#"{"type":"event.result"}"#, None).is_err());
    let sports = Incoming::parse(
        Provider::Sports,
        br#"{"type":"event.result"}"#,
        Some("msg_1"),
    )
    .unwrap();
    assert_eq!(
        (sports.event_id.as_str(), sports.event_type.as_str()),
        ("msg_1", "event.result")
    );
    let persona =
        br#"{"data":{"type":"event","id":"evt_p","attributes":{"name":"inquiry.completed"}}}"#;
    let persona = Incoming::parse(Provider::Persona, persona, None).unwrap();
    assert_eq!(
        (persona.event_id.as_str(), persona.event_type.as_str()),
        ("evt_p", "inquiry.completed")
    );
}
