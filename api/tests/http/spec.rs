//! The committed spec is the generated one, and every operation documents itself.

use serde_json::Value;

const REGENERATE: &str = "cargo run -p groundcrew-api --bin api -- openapi > openapi/openapi.json";

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

/// Routes with an id in the path that never answer 404, and why.
const NO_LOOKUP_BY_ID: &[&str] = &[
    // Picks need no profile, so any id has stats: zeros until the user's first settled pick.
    "get_user_stats",
];

#[test]
fn committed_spec_is_current() {
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed.trim_end() == groundcrew_api::spec_json().trim_end(),
        "openapi/openapi.json differs from the generated spec; run `{REGENERATE}`"
    );
}

#[test]
fn every_operation_documents_itself() {
    let spec: Value = serde_json::from_str(&groundcrew_api::spec_json()).unwrap();
    let mut operations = 0;
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let name = format!("{method} {path}");
            assert!(
                op["operationId"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: operationId"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{name}: tag"
            );
            assert!(
                op["summary"].is_string() || op["description"].is_string(),
                "{name}: description"
            );
            let statuses: Vec<&str> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let declares = |codes: &[&str]| {
                for code in codes {
                    assert!(
                        statuses.contains(code),
                        "{name}: declares {code} (has {statuses:?})"
                    );
                }
            };
            // Probes answer 200 to anyone; every /v1 route can fail with some 4xx.
            if path.starts_with("/v1/") {
                assert!(statuses.iter().any(|s| s.starts_with('4')), "{name}: a 4xx");
            }
            if op.get("security").is_some() {
                declares(&["401", "429"]);
            }
            if let Some(body) = op.get("requestBody") {
                declares(&["400", "413"]);
                // A raw-bytes body (signed webhooks) takes any content type and is not parsed
                // by the framework, so neither 415 nor 422 can come from it.
                if body["content"].get("application/octet-stream").is_none() {
                    declares(&["415", "422"]);
                }
            }
            let path_params: Vec<&serde_json::Value> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["in"] == "path").collect())
                .unwrap_or_default();
            if !path_params.is_empty() {
                declares(&["422"]);
            }
            // A resource addressed by id may not exist. (A device token is not looked up:
            // registering and removing one are idempotent.)
            let operation_id = op["operationId"].as_str().unwrap_or_default();
            if path_params.iter().any(|p| p["schema"]["format"] == "uuid")
                && !NO_LOOKUP_BY_ID.contains(&operation_id)
            {
                declares(&["404"]);
            }
        }
    }
    assert!(operations >= 17, "found {operations} operations");
}
