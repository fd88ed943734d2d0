//! The binary's subcommands, run as a child process.

use std::process::Command;

use groundcrew_api::{auth::Verifier, config::AuthConfig};

fn api() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_api"));
    cmd.env_remove("GROUNDCREW_JWT_SECRET")
        .env_remove("GROUNDCREW_JWT_PUBLIC_KEYS_FILE");
    cmd
}

#[test]
fn serve_names_the_missing_secret() {
    let out = api().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GROUNDCREW_JWT_SECRET"), "{stderr}");
}

#[test]
fn serve_names_a_bad_trusted_proxy() {
    let out = api()
        .arg("serve")
        .env("GROUNDCREW_JWT_SECRET", "cli-secret")
        .env("GROUNDCREW_TRUSTED_PROXIES", "10.0.0.0/8, lb.internal")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GROUNDCREW_TRUSTED_PROXIES") && stderr.contains("lb.internal"),
        "{stderr}"
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
