//! What every benchmark reports besides its rate: CPU spent by this process and by Redis, and
//! latency percentiles computed the way the BullMQ peer script computes them.

use std::time::Instant;

use anyhow::Context;
use redis::aio::ConnectionManager;

/// CPU seconds (user + system) this process has used, from /proc (Linux only, like the bench).
pub fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // The command name may contain spaces; the fields we want come after its closing paren.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after the paren.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the Redis server has used, from `INFO cpu`.
pub async fn redis_cpu_secs(conn: &mut ConnectionManager) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .context("INFO cpu")?;
    Ok(info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum())
}

/// CPU and wall clock from the start of a measured phase.
pub struct Meter {
    started: Instant,
    cpu: f64,
    redis_cpu: f64,
    redis: ConnectionManager,
}

pub struct Spent {
    pub worker_cpu: f64,
    pub redis_cpu: f64,
}

impl Meter {
    pub async fn start(redis_url: &str) -> anyhow::Result<Self> {
        let mut redis = redis::Client::open(redis_url)?
            .get_connection_manager()
            .await
            .context("connect to Redis")?;
        Ok(Meter {
            started: Instant::now(),
            cpu: process_cpu_secs(),
            redis_cpu: redis_cpu_secs(&mut redis).await?,
            redis,
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub async fn stop(mut self) -> anyhow::Result<Spent> {
        Ok(Spent {
            worker_cpu: process_cpu_secs() - self.cpu,
            redis_cpu: redis_cpu_secs(&mut self.redis).await? - self.redis_cpu,
        })
    }
}

/// The value at rank round((n-1)·p) of the sorted sample, as the BullMQ script picks it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The median of unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let s = sorted(values.to_vec());
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One result line, JSON, on stdout.
pub fn emit(line: serde_json::Value) {
    println!("{line}");
}
