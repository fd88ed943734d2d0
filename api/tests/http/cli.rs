//! The binary's subcommands, run as a child process.

use std::process::Command;

use groundcrew_api::{auth::Verifier, config::AuthConfig};

fn api() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_api"));
    cmd.env_remove("GROUNDCREW_JWT_SECRET")
        .env_remove("GROUNDCREW_JWT_PUBLIC_KEYS_FILE");
    cmd
}

/// Runs `api serve` with `env` and expects it to stop with every one of `named` on stderr.
fn serve_refuses(env: &[(&str, &str)], named: &[&str]) {
    let out = api()
        .arg("serve")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in named {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[test]
fn serve_names_the_missing_secret() {
    serve_refuses(&[], &["GROUNDCREW_JWT_SECRET"]);
}

#[test]
fn serve_names_a_bad_trusted_proxy() {
    serve_refuses(
        &[
            ("GROUNDCREW_JWT_SECRET", "cli-secret"),
            ("GROUNDCREW_TRUSTED_PROXIES", "10.0.0.0/8, lb.internal"),
        ],
        &["GROUNDCREW_TRUSTED_PROXIES", "lb.internal"],
    );
}

#[test]
fn serve_names_a_public_url_without_a_scheme() {
    serve_refuses(
        &[
            ("GROUNDCREW_JWT_SECRET", "cli-secret"),
            ("GROUNDCREW_PUBLIC_URL", "api.example.com"),
        ],
        &["GROUNDCREW_PUBLIC_URL", "https://"],
    );
}

#[test]
fn token_prints_a_token_the_api_accepts() {
    let sub = uuid::Uuid::now_v7();
    let out = api()
        .env("GROUNDCREW_JWT_SECRET", "cli-secret")
        .args([
            "token",
            "--sub",
            &sub.to_string(),
            "--role",
            "admin",
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = Verifier::new(&AuthConfig {
        jwt_secret: Some("cli-secret".into()),
        public_keys_pem: None,
        issuer: "groundcrew".into(),
        audience: "groundcrew-api".into(),
    })
    .unwrap();
    let caller = verifier.verify(token.trim()).unwrap();
    assert_eq!(caller.id, sub);
    assert!(caller.has(groundcrew_api::auth::Role::Admin));
}
