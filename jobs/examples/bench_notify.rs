//! Push and email throughput, side by side in one run:
//!
//! - `apns_bare_h2`: a bare HTTP/2 client (the `h2` crate, one connection, 256 streams in
//!   flight) blasting the local APNs endpoint with the worker's requests, each built before the
//!   clock starts (one per notification: its device token, collapse id and payload) — the
//!   physical limit here;
//! - `apns_bare_hyper`: the same with hyper's HTTP/2 client connection, the bare client of
//!   earlier runs (hyper spawns a task per request: it is the slower of the two);
//! - `apns_bare_client`: our APNs client's `send` alone (256 in flight: the payload built with
//!   a2, the token, the headers; no queue, no Postgres) — what the client costs over the bare
//!   writes;
//! - `apns_worker`: notifications through `notify.deliver_batch` on an in-process notify pool
//!   (preferences, delivery rows, sends, outcomes) to the same endpoint;
//! - `fcm_bare_h2`: the bare `h2` client blasting the local FCM v1 endpoint with the worker's
//!   requests (its OAuth token fetched once) — FCM's physical limit here;
//! - `fcm_bare_client`: our FCM client's `send` alone (256 in flight, no queue, no Postgres);
//! - `fcm_worker`: the same notifications to Android devices through the notify pool;
//! - `email_worker`: welcome emails through the pool to a local aiosmtpd.
//!
//! The phases run one after another, each from empty request logs, and repeat `runs` times
//! because the machine's cores are shared; each run prints a JSON line, then the medians. Each
//! line also says where the phase's CPU went, in µs per item: this process (the clients, the
//! worker and the local provider servers), Postgres, Redis, the rest (aiosmtpd, the kernel's
//! threads) and the whole machine (Linux's `/proc`; zeros elsewhere). A machine that runs
//! faster or slower from one minute to the next moves every phase's rate; the split shows what
//! the worker costs beside the push itself. Needs local Postgres and Redis.
//!
//!     cargo run --release -p groundcrew-jobs --example bench_notify -- [pushes] [emails] [runs]

use std::{ops::Sub, sync::Arc, time::Instant};

use groundcrew_jobs::{
    JobTx, Queue,
    notify::{
        Category, Notification, Providers,
        apns::ApnsClient,
        fcm::FcmClient,
        notify_many,
        push::{PushMessage, PushOutcome},
        settings::{NotifySettings, SmtpPool},
    },
    worker::PoolSpec,
};
use groundcrew_testkit::{TestEnv, apns::FakeApns, fcm::FakeFcm, smtp::SmtpServer};
use http_body_util::Full;
use hyper::body::Bytes;
use uuid::Uuid;

const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pushes = args.first().copied().unwrap_or(20_000);
    let emails = args.get(1).copied().unwrap_or(2_000);
    let runs = args.get(2).copied().unwrap_or(3);

    // The workers binary's metrics recorder: with none, every counter is free.
    groundcrew_jobs::telemetry::metrics();
    let apns = FakeApns::start().await;
    let fcm = FakeFcm::start().await;
    let smtp = SmtpServer::start();
    let mut env = TestEnv::new().await;
    env.services.notify = Arc::new(
        Providers::new(NotifySettings {
            apns: Some(apns.settings()),
            fcm: Some(fcm.settings()),
            smtp_url: Some(smtp.url()),
            smtp_pool: SmtpPool::default(),
            mail_from: "groundcrew <noreply@groundcrew.test>".into(),
            data_dir: std::env::temp_dir(),
            one_click: None,
        })
        .expect("providers"),
    );
    let users = seed_users(&env, pushes.max(emails), "apns").await;
    let android_users = seed_users(&env, pushes, "fcm").await;
    // Statistics, as autovacuum gives a production database (this machine's Postgres runs
    // without it): without them Postgres expects hundreds of devices per user and looks each
    // user's up with a bitmap scan, 0.4-0.8 µs of its CPU a push more than the index scan.
    sqlx::query("ANALYZE users, devices")
        .execute(&env.services.db)
        .await
        .expect("analyze");

    // BENCH_ONLY=apns_worker,apns_bare_h2 runs just those (to profile one of them).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let selected = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let mut results: Vec<(&str, f64, CpuTimes)> = Vec::new();
    let mut record = |name: &'static str, run: usize, n: usize, timed: Timed| {
        let per_item = timed.cpu.per_item_us(n);
        println!(
            "{}",
            serde_json::json!({"bench": name, "run": run, "n": n,
                               "secs": (timed.secs * 1000.0).round() / 1000.0,
                               "per_sec": (n as f64 / timed.secs).round(),
                               "cpu_us_per_item": per_item.json()})
        );
        results.push((name, n as f64 / timed.secs, per_item));
    };
    // Each phase starts from empty request logs (FakeApns::clear_requests says why).
    let starts = |name: &str| {
        apns.clear_requests();
        fcm.clear_messages();
        selected(name)
    };
    for run in 1..=runs {
        if starts("apns_bare_h2") {
            let timed = apns_bare_h2(&apns, pushes).await;
            record("apns_bare_h2", run, pushes, timed);
        }
        if starts("apns_bare_hyper") {
            let timed = apns_bare_hyper(&apns, pushes).await;
            record("apns_bare_hyper", run, pushes, timed);
        }
        if starts("apns_bare_client") {
            let client = ApnsClient::new(apns.settings()).expect("client");
            let timed = bare_client(PushClient::Apns(Box::new(client)), pushes).await;
            record("apns_bare_client", run, pushes, timed);
        }
        if starts("apns_worker") {
            let timed = through_worker(&env, &users[..pushes], false).await;
            record("apns_worker", run, pushes, timed);
        }
        if starts("fcm_bare_h2") {
            let timed = fcm_bare_h2(&fcm, pushes).await;
            record("fcm_bare_h2", run, pushes, timed);
        }
        if starts("fcm_bare_client") {
            let client = FcmClient::new(fcm.settings()).expect("client");
            let timed = bare_client(PushClient::Fcm(Box::new(client)), pushes).await;
            record("fcm_bare_client", run, pushes, timed);
        }
        if starts("fcm_worker") {
            let timed = through_worker(&env, &android_users, false).await;
            record("fcm_worker", run, pushes, timed);
        }
        if starts("email_worker") {
            let timed = through_worker(&env, &users[..emails], true).await;
            record("email_worker", run, emails, timed);
            // Rows say `sent` for a retried send too: the server's log says each went once.
            assert_eq!(
                smtp.messages().len(),
                emails * run,
                "each email arrived once"
            );
        }
    }
    let mut medians = serde_json::Map::new();
    let mut cpu_medians = serde_json::Map::new();
    for name in [
        "apns_bare_h2",
        "apns_bare_hyper",
        "apns_bare_client",
        "apns_worker",
        "fcm_bare_h2",
        "fcm_bare_client",
        "fcm_worker",
        "email_worker",
    ] {
        let runs: Vec<_> = results.iter().filter(|r| r.0 == name).collect();
        if runs.is_empty() {
            continue;
        }
        let rate = median(runs.iter().map(|r| r.1).collect());
        medians.insert(name.into(), serde_json::json!(rate.round()));
        let cpu = CpuTimes::from_fields(|field| median(runs.iter().map(|r| field(&r.2)).collect()));
        cpu_medians.insert(name.into(), cpu.json());
    }
    for (name, ours, bare) in [
        ("apns_worker_vs_bare", "apns_worker", "apns_bare_h2"),
        ("apns_worker_vs_hyper", "apns_worker", "apns_bare_hyper"),
        ("fcm_worker_vs_bare", "fcm_worker", "fcm_bare_h2"),
        ("fcm_worker_vs_client", "fcm_worker", "fcm_bare_client"),
    ] {
        let (Some(ours), Some(bare)) = (medians.get(ours), medians.get(bare)) else {
            continue;
        };
        let ratio = ours.as_f64().unwrap() / bare.as_f64().unwrap();
        medians.insert(
            name.into(),
            serde_json::json!((ratio * 100.0).round() / 100.0),
        );
    }
    println!(
        "{}",
        serde_json::json!({"medians_per_sec": medians, "median_cpu_us_per_item": cpu_medians})
    );
}

/// CPU seconds (user and system) spent so far by this process, by every Postgres process (and
/// the backends that exited), by Redis, and by the whole machine.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    this_process: f64,
    postgres: f64,
    redis: f64,
    machine: f64,
}

impl CpuTimes {
    /// Read from `/proc`; zeros where there is none.
    fn now() -> Self {
        // Clock ticks per second as `/proc` counts them (USER_HZ, 100 on every Linux build).
        const TICKS: f64 = 100.0;
        let mut times = CpuTimes::default();
        let me = std::process::id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name();
            let Some(pid) = pid
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (command) state ppid …`: the command may hold spaces and parentheses, and
            // utime and stime are the 12th and 13th fields after it.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let command = head.split_once('(').map_or("", |(_, c)| c);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            let secs = (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / TICKS;
            if pid == me {
                times.this_process += secs;
            } else if command == "postgres" {
                // With the times of children it reaped (cutime, cstime): a backend that exits
                // during a phase (a pool closing a connection) moves its seconds to the
                // postmaster's, where they had vanished (-130 µs a push in one phase).
                let reaped = ticks(13).unwrap_or(0.0) + ticks(14).unwrap_or(0.0);
                times.postgres += secs + reaped / TICKS;
            } else if command == "redis-server" {
                times.redis += secs;
            }
        }
        // `cpu  user nice system idle iowait irq softirq steal …`: busy is all but idle and
        // iowait.
        let machine = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = machine
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        if ticks.len() == 8 {
            times.machine = (ticks.iter().sum::<f64>() - ticks[3] - ticks[4]) / TICKS;
        }
        times
    }

    /// Times whose every field is `value` of that field's reader.
    fn from_fields(value: impl Fn(fn(&CpuTimes) -> f64) -> f64) -> Self {
        CpuTimes {
            this_process: value(|t| t.this_process),
            postgres: value(|t| t.postgres),
            redis: value(|t| t.redis),
            machine: value(|t| t.machine),
        }
    }

    /// Seconds per item as µs per item.
    fn per_item_us(self, n: usize) -> Self {
        Self::from_fields(|field| (field(&self) / n as f64 * 1e7).round() / 10.0)
    }

    /// With `rest`: the machine's time outside the three (aiosmtpd, the kernel's threads).
    fn json(self) -> serde_json::Value {
        let rest = self.machine - self.this_process - self.postgres - self.redis;
        serde_json::json!({"this_process": self.this_process, "postgres": self.postgres,
                           "redis": self.redis, "rest": (rest * 10.0).round() / 10.0,
                           "machine": self.machine})
    }
}

impl Sub for CpuTimes {
    type Output = CpuTimes;

    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes::from_fields(|field| field(&self) - field(&earlier))
    }
}

/// The median of some runs' figures (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Users with one device on `platform` and an email address each.
async fn seed_users(env: &TestEnv, n: usize, platform: &str) -> Vec<Uuid> {
    let users: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "WITH u AS (SELECT id, row_number() OVER () AS n FROM unnest($1::uuid[]) AS id)
         , users AS (INSERT INTO users (id, handle, email)
                     SELECT id, $2 || '_' || n, $2 || n || '@example.test' FROM u)
         INSERT INTO devices (id, token, user_id, platform)
         SELECT gen_random_uuid(), md5(id::text) || md5(n::text), id, $2 FROM u",
    )
    .bind(&users)
    .bind(platform)
    .execute(&env.services.db)
    .await
    .expect("seed users");
    users
}

/// A timed phase under way: when it started and the CPU times then.
struct Phase {
    started: Instant,
    cpu: CpuTimes,
}

/// A finished phase: its seconds, and the CPU seconds spent in it.
struct Timed {
    secs: f64,
    cpu: CpuTimes,
}

/// Says so on stderr, for a profiler to start recording then (`perf record -a` from when the
/// line appears leaves out seeding and enqueueing).
fn timed_phase_starts() -> Phase {
    eprintln!("timed phase starts");
    let cpu = CpuTimes::now();
    Phase {
        started: Instant::now(),
        cpu,
    }
}

impl Phase {
    fn end(&self) -> Timed {
        let secs = self.started.elapsed().as_secs_f64();
        Timed {
            secs,
            cpu: CpuTimes::now() - self.cpu,
        }
    }
}

/// Seconds to deliver one notification (push, or a welcome email) to each user.
async fn through_worker(env: &TestEnv, users: &[Uuid], email: bool) -> Timed {
    let notifications = users
        .iter()
        .map(|u| {
            let n = Notification::new(*u, Category::Social, "New follower", "@bench follows you");
            if email {
                n.email("welcome", serde_json::json!({})).without_push()
            } else {
                n
            }
        })
        .collect();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = notify_many(&mut tx, notifications).await.unwrap();
    tx.commit().await.unwrap();
    let started = timed_phase_starts();
    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: std::env::var("BENCH_CONCURRENCY")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(Queue::Notify.default_concurrency()),
    }]);
    // Polls Redis, not Postgres: counting delivery rows every few milliseconds cost the
    // database more than the deliveries did. The rows are counted once, at the end.
    loop {
        let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
        if depth.pending + depth.scheduled + depth.running == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let timed = started.end();
    workers.shutdown().await;
    assert_eq!(
        env.sent_deliveries(&ids).await,
        users.len(),
        "every notification delivered"
    );
    timed
}

/// The message of every benchmark push.
fn bench_message<'a>(id: Uuid, send_id: &'a str, data: &'a serde_json::Value) -> PushMessage<'a> {
    PushMessage {
        title: "New follower",
        body: "@bench follows you",
        data,
        notification_id: id,
        send_id,
        expires_at: chrono::Utc::now().timestamp() + 86_400,
    }
}

/// Seconds for the `n` sends `send` makes, at most `IN_FLIGHT` at once. Finished sends are
/// reaped as they go: holding every task until the end kept each one's memory (a send's future
/// is kilobytes), and faulting in that fresh memory was half of a 100,000-send run.
async fn blast<F, Fut>(n: usize, send: F) -> Timed
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = timed_phase_starts();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..n {
        if sends.len() == IN_FLIGHT {
            sends.join_next().await.expect("a send").expect("send task");
        }
        sends.spawn(send(i));
    }
    while let Some(done) = sends.join_next().await {
        done.expect("send task");
    }
    started.end()
}

/// One request as the worker would send it: its head and its body.
type Prepared = (hyper::Request<()>, Bytes);

/// The TCP connection (h2c) a bare client opens to `base`.
async fn connect(base: &str) -> tokio::net::TcpStream {
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Seconds for `requests` on one HTTP/2 connection (h2c) to `base` with the `h2` crate alone:
/// the physical limit of the endpoint here.
async fn bare_h2(base: &str, requests: Vec<Prepared>) -> Timed {
    let io = connect(base).await;
    let (sender, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let requests = requests_by_index(requests);
    blast(requests.len(), |i| {
        let sender = sender.clone();
        let (head, body) = requests.take(i);
        async move {
            let mut sender = sender.ready().await.expect("h2 ready");
            let (response, mut stream) = sender.send_request(head, false).expect("h2 request");
            stream.send_data(body, true).expect("h2 body");
            let response = response.await.expect("h2 response");
            assert_eq!(response.status(), 200);
            // To its end, as the worker reads it: a stream dropped early is reset.
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("h2 response body");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
        }
    })
    .await
}

/// The same requests with hyper's HTTP/2 client connection.
async fn bare_hyper(base: &str, requests: Vec<Prepared>) -> Timed {
    let io = hyper_util::rt::TokioIo::new(connect(base).await);
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(io)
            .await
            .unwrap();
    tokio::spawn(connection);
    let requests = requests_by_index(requests);
    blast(requests.len(), |i| {
        let mut sender = sender.clone();
        let (head, body) = requests.take(i);
        async move {
            let request = hyper::Request::from_parts(head.into_parts().0, Full::new(body));
            let response = sender.send_request(request).await.expect("h2 request");
            assert_eq!(response.status(), 200);
        }
    })
    .await
}

/// Prepared requests a blast takes by index, each once.
struct ByIndex(Vec<std::sync::Mutex<Option<Prepared>>>);

fn requests_by_index(requests: Vec<Prepared>) -> ByIndex {
    ByIndex(
        requests
            .into_iter()
            .map(|r| std::sync::Mutex::new(Some(r)))
            .collect(),
    )
}

impl ByIndex {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn take(&self, i: usize) -> Prepared {
        self.0[i].lock().unwrap().take().expect("each request once")
    }
}

/// The requests the APNs worker sends for `n` notifications, without anything around them.
fn apns_requests(apns: &FakeApns, n: usize) -> Vec<Prepared> {
    let client = ApnsClient::new(apns.settings()).expect("client");
    let bearer = client.authorization().expect("token");
    let data = serde_json::json!({});
    (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            let send_id = id.to_string();
            let message = bench_message(id, &send_id, &data);
            let token = format!("bench{i}");
            let head = client
                .head(&apns.url, &token, None, bearer.clone(), &message)
                .unwrap();
            (head, Bytes::from(ApnsClient::payload(&message, &token)))
        })
        .collect()
}

async fn apns_bare_h2(apns: &FakeApns, n: usize) -> Timed {
    bare_h2(&apns.url, apns_requests(apns, n)).await
}

async fn apns_bare_hyper(apns: &FakeApns, n: usize) -> Timed {
    bare_hyper(&apns.url, apns_requests(apns, n)).await
}

/// The FCM v1 requests the worker sends for `n` notifications, without anything around them.
async fn fcm_bare_h2(fcm: &FakeFcm, n: usize) -> Timed {
    let client = FcmClient::new(fcm.settings()).expect("client");
    let token = client.access_token().await.expect("token");
    let data = serde_json::json!({});
    let requests = (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            let send_id = id.to_string();
            let message = bench_message(id, &send_id, &data);
            let head = client.head(&token).unwrap();
            let body = FcmClient::message(&message, &format!("bench{i}")).to_string();
            (head, Bytes::from(body))
        })
        .collect();
    bare_h2(&fcm.url, requests).await
}

/// A push client benchmarked alone.
enum PushClient {
    Apns(Box<ApnsClient>),
    Fcm(Box<FcmClient>),
}

impl PushClient {
    async fn send(&self, token: &str, message: &PushMessage<'_>) -> PushOutcome {
        match self {
            PushClient::Apns(apns) => apns.send(token, false, None, message).await,
            PushClient::Fcm(fcm) => fcm.send(token, message).await,
        }
    }
}

/// One client's sends alone, with the payload the worker sends: for APNs, what reqwest and a2
/// add to the bare HTTP/2 writes; for both, the ceiling of the worker without queue or Postgres.
async fn bare_client(client: PushClient, n: usize) -> Timed {
    let client = Arc::new(client);
    blast(n, |i| {
        let client = client.clone();
        async move {
            let id = Uuid::now_v7();
            let (send_id, data) = (id.to_string(), serde_json::json!({}));
            let message = bench_message(id, &send_id, &data);
            let outcome = client.send(&format!("bench{i}"), &message).await;
            assert!(matches!(outcome, PushOutcome::Sent), "{outcome:?}");
        }
    })
    .await
}
