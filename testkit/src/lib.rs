//! Fixtures for tests against real Postgres and Redis: a fresh database and a Redis key prefix
//! per test (so tests run in parallel), or a private `redis-server` a test may stop and start.

pub mod apns;
pub mod fcm;
pub mod http_server;
pub mod identity;
pub mod media;
pub mod s3;
pub mod smtp;
pub mod stripe;
pub mod tls;

use std::{
    future::Future,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use groundcrew_jobs::{CoreSettings, Services, db, media::MediaSettings, worker::PoolSpec};
use tokio_util::sync::CancellationToken;

pub fn postgres_base() -> String {
    std::env::var("GROUNDCREW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("GROUNDCREW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A migrated database and a key prefix of its own; both are removed on drop.
pub struct TestEnv {
    pub services: Services,
    pub settings: CoreSettings,
    pub db_name: String,
    pub private_redis: Option<PrivateRedis>,
    /// `GROUNDCREW_DATA_DIR` of this test: media objects and scratch files.
    pub data_dir: tempfile::TempDir,
}

impl TestEnv {
    /// On the shared Redis, with a unique key prefix.
    pub async fn new() -> Self {
        Self::build(|_| {}, None).await
    }

    pub async fn with(tweak: impl FnOnce(&mut CoreSettings)) -> Self {
        Self::build(tweak, None).await
    }

    /// On a Redis server of its own, which the test may stop and restart.
    pub async fn with_private_redis(tweak: impl FnOnce(&mut CoreSettings)) -> Self {
        let redis = PrivateRedis::start();
        Self::build(tweak, Some(redis)).await
    }

    async fn build(tweak: impl FnOnce(&mut CoreSettings), redis: Option<PrivateRedis>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("gct_{}", &id[..16]);
        let admin = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base()))
            .await
            .expect("test Postgres reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let mut settings = CoreSettings {
            database_url: format!("{}/{db_name}", postgres_base()),
            redis_url: redis.as_ref().map(|r| r.url()).unwrap_or_else(redis_url),
            queue_prefix: format!("gct:{}", &id[..12]),
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
        };
        tweak(&mut settings);
        let mut services = Services::new(settings.clone(), 20).expect("services");
        let data_dir = tempfile::tempdir().expect("test data dir");
        services.media = std::sync::Arc::new(
            MediaSettings::local(data_dir.path()).expect("media storage in the test's data dir"),
        );
        db::migrate(&services.db).await.expect("migrations");
        TestEnv {
            services,
            settings,
            db_name,
            private_redis: redis,
            data_dir,
        }
    }

    /// Environment variables that point a child process (a real binary) at this test's stores.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        vec![
            ("DATABASE_URL".into(), s.database_url.clone()),
            ("REDIS_URL".into(), s.redis_url.clone()),
            ("GROUNDCREW_QUEUE_PREFIX".into(), s.queue_prefix.clone()),
            (
                "GROUNDCREW_JOB_LEASE".into(),
                format!("{}ms", s.lease.as_millis()),
            ),
            (
                "GROUNDCREW_JOB_RETENTION".into(),
                format!("{}ms", s.retention.as_millis()),
            ),
            (
                "GROUNDCREW_SHUTDOWN_GRACE".into(),
                format!("{}ms", s.shutdown_grace.as_millis()),
            ),
            (
                "GROUNDCREW_POLL_INTERVAL".into(),
                format!("{}ms", s.poll_interval.as_millis()),
            ),
            (
                "GROUNDCREW_DATA_DIR".into(),
                self.data_dir.path().display().to_string(),
            ),
        ]
    }

    /// Runs worker pools in this process until the returned handle is stopped.
    pub fn spawn_workers(&self, pools: Vec<PoolSpec>) -> InProcess {
        let stop = CancellationToken::new();
        let services = self.services.clone();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            groundcrew_jobs::worker::run_workers(services, pools, token).await
        });
        InProcess { stop, handle }
    }

    pub fn spawn_relay(&self) -> InProcess {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(groundcrew_jobs::outbox::run_relay(
            self.services.clone(),
            stop.clone(),
        ));
        InProcess { stop, handle }
    }

    /// A user row with a unique handle, no email, in UTC: someone to own posts, picks, deals.
    pub async fn user(&self) -> uuid::Uuid {
        self.user_with(None, "UTC").await
    }

    /// A user row with a unique handle, the given email address and IANA time zone.
    pub async fn user_with(&self, email: Option<&str>, timezone: &str) -> uuid::Uuid {
        let id = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO users (id, handle, email, timezone) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(format!("u{}", &id.simple().to_string()[16..]))
            .bind(email)
            .bind(timezone)
            .execute(&self.services.db)
            .await
            .expect("insert user");
        id
    }

    /// A device of `user_id`'s, enabled, on `platform` (`apns` or `fcm`).
    pub async fn device(&self, user_id: uuid::Uuid, token: &str, platform: &str) {
        sqlx::query("INSERT INTO devices (id, token, user_id, platform) VALUES ($1, $2, $3, $4)")
            .bind(uuid::Uuid::now_v7())
            .bind(token)
            .bind(user_id)
            .bind(platform)
            .execute(&self.services.db)
            .await
            .expect("insert device");
    }

    /// Records a notification in a committed transaction (its delivery job enqueued with it).
    pub async fn send(&self, notification: groundcrew_jobs::notify::Notification) -> uuid::Uuid {
        let mut tx = groundcrew_jobs::JobTx::begin(&self.services)
            .await
            .expect("begin");
        let id = groundcrew_jobs::notify::notify(&mut tx, notification)
            .await
            .expect("notify");
        tx.commit().await.expect("commit");
        id
    }

    /// How many of these notifications' deliveries are `sent`.
    pub async fn sent_deliveries(&self, notification_ids: &[uuid::Uuid]) -> usize {
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notification_deliveries
             WHERE notification_id = ANY($1) AND status = 'sent'",
        )
        .bind(notification_ids)
        .fetch_one(&self.services.db)
        .await
        .expect("count sent deliveries");
        sent as usize
    }

    /// Each run of a `maintenance.canary` job in order: its attempt and whether it was the
    /// job's first run.
    pub async fn canary_runs(&self, job_id: uuid::Uuid) -> Vec<(i32, Option<bool>)> {
        sqlx::query_as(
            "SELECT attempt, first_run FROM canary_attempts WHERE job_id = $1 ORDER BY at",
        )
        .bind(job_id)
        .fetch_all(&self.services.db)
        .await
        .expect("canary runs")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db_name = self.db_name.clone();
        let prefix = self.settings.queue_prefix.clone();
        let redis = self.settings.redis_url.clone();
        let shared_redis = self.private_redis.is_none();
        // Drop runs inside the test's runtime; clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(admin) =
                    sqlx::PgPool::connect(&format!("{}/postgres", postgres_base())).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
                if shared_redis {
                    let _ = delete_prefix(&redis, &prefix).await;
                }
            });
        })
        .join();
    }
}

async fn delete_prefix(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Something running in the test's process, stopped on request.
pub struct InProcess {
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl InProcess {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// A `redis-server` child on a free port, not persisted.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = free_port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a system tool (scripts/services installs them) and fails the test with its stderr
/// unless it succeeds.
pub fn run_tool(command: &mut std::process::Command) {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/services installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {:?}: {}",
        command.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Polls `check` until it returns `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
