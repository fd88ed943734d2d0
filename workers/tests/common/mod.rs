//! The real `workers` binary as a child process of a crash test, pointed at the test's stores.

// Each crash-test binary uses a different part of this harness.
#![allow(dead_code)]

use std::{
    ffi::OsStr,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use groundcrew_testkit::{
    TestEnv, eventually,
    stripe::{FakeStripe, SECRET_KEY},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// For tests whose workers need no settings beyond the test's stores.
pub const NO_ENV: [(&str, &str); 0] = [];

/// The environment that points a worker's escrow jobs at a local fake Stripe.
pub fn stripe_env(stripe: &FakeStripe) -> [(&'static str, String); 2] {
    [
        ("GROUNDCREW_STRIPE_API_BASE", stripe.base_url()),
        ("GROUNDCREW_STRIPE_SECRET_KEY", SECRET_KEY.to_owned()),
    ]
}

/// A running `workers` process; killed (SIGKILL) and reaped when dropped.
pub struct Workers(Child);

impl Workers {
    /// Works one queue at `concurrency`; `extra` adds provider settings to the environment.
    pub fn start<K, V>(
        env: &TestEnv,
        queue: &str,
        concurrency: usize,
        extra: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::start_pools(env, &[(queue, concurrency)], extra)
    }

    /// Works each (queue, concurrency) of `pools` in one process.
    pub fn start_pools<K, V>(
        env: &TestEnv,
        pools: &[(&str, usize)],
        extra: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let queues: Vec<&str> = pools.iter().map(|(queue, _)| *queue).collect();
        let concurrency: Vec<String> = pools.iter().map(|(q, c)| format!("{q}={c}")).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_workers"))
            .args(["--queues", &queues.join(",")])
            .args(["--concurrency", &concurrency.join(",")])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .envs(env.child_env())
            .envs(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("workers binary");
        Workers(child)
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), signal).expect("signal");
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill_9(mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reaped");
    }

    /// Waits for the process to exit by itself.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        eventually(within, "the worker to exit", || {
            let status = self.0.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
