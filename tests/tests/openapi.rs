//! The control API's OpenAPI document as a running daemon serves it: valid by an independent validator
//! (PyPI's openapi-spec-validator), listing exactly the routes found in the daemon's code, each of them
//! served, and the same document on the local socket and on the remote API (behind its token).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use tests::{json, livemount, Daemon};

/// The control API's routes, as read from the routers in appliance/src/daemon (api.rs, cloud_api.rs,
/// status.rs, metrics.rs, remote/mod.rs, openapi.rs); the iPXE routes, served on another port, are not
/// the control API. A route added to the code and not here, or documented and not here, fails the test.
const ROUTES: [(&str, &str); 32] = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/health"),
    ("GET", "/v1/status"),
    ("GET", "/v1/mounts"),
    ("POST", "/v1/mounts"),
    ("GET", "/v1/mounts/{id}"),
    ("DELETE", "/v1/mounts/{id}"),
    ("POST", "/v1/mounts/{id}/commit"),
    ("POST", "/v1/browse"),
    ("DELETE", "/v1/browse/{id}"),
    ("GET", "/v1/cloud/accounts"),
    ("POST", "/v1/cloud/accounts"),
    ("DELETE", "/v1/cloud/accounts/{name}"),
    ("POST", "/v1/cloud/accounts/{name}/check"),
    ("POST", "/v1/cloud/images/ipxe"),
    ("POST", "/v1/cloud/images/access-node"),
    ("GET", "/v1/cloud/resources"),
    ("POST", "/v1/cloud/cleanup"),
    ("POST", "/v1/cloud/backups"),
    ("POST", "/v1/cloud/snapshot-backups"),
    ("DELETE", "/v1/cloud/snapshot-backups/{id}"),
    ("POST", "/v1/cloud/ebs-backups"),
    ("POST", "/v1/cloud/ebs-restores"),
    ("POST", "/v1/cloud/backup-copies"),
    ("POST", "/v1/cloud/restores"),
    ("POST", "/v1/cloud/file-recoveries"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{name}"),
];

const TAGS: [&str; 7] = ["mounts", "browse", "cloud", "jobs", "tokens", "status", "metrics"];

/// Asks the daemon's local socket with curl; gives (HTTP status, body). A POST carries a body that is not
/// JSON, which every route that takes one refuses before doing anything.
fn local(daemon: &Daemon, method: &str, path: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", "-X", method, "--unix-socket"]).arg(daemon.api());
    if method == "POST" {
        c.args(["-H", "content-type: application/json", "--data", "not json"]);
    }
    tests::curl_answer(c.arg(format!("http://livemount{path}")))
}

/// `python3 -m openapi_spec_validator FILE`: the document is valid OpenAPI (of the version it says), its
/// references resolve.
fn validate(file: &Path) {
    let out = Command::new("python3").arg("-m").arg("openapi_spec_validator").arg(file).output().expect("python3 runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !said.contains("No module named openapi_spec_validator"),
        "openapi-spec-validator is missing: scripts/install-deps.sh test installs it"
    );
    // The validator quotes the whole document after the error: the start says what is wrong.
    assert!(out.status.success(), "the document is not valid OpenAPI: {}", said.chars().take(2000).collect::<String>());
}

/// Every (method, path) the document has, method in capitals.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, &serde_json::Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    ops
}

#[test]
fn the_openapi_document_is_valid_and_has_every_route() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lib = dir.join("library");
    livemount(&lib).args(["library", "init", "--chunk-size", "64K"]).assert().success();
    let config = dir.join("livemount.toml");
    std::fs::write(&config, "[remote_api]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    // AWS out of reach at once (refused, not waited for): the cloud routes probed below fail fast.
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", "none"),
        ("AWS_SECRET_ACCESS_KEY", "none"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let daemon = Daemon::start_env(dir, &lib, &["--config", config.to_str().unwrap()], &env);

    let (code, text) = local(&daemon, "GET", "/openapi.json");
    assert_eq!(code, 200, "{text}");
    let file = dir.join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    validate(&file);

    let doc = json(text.as_bytes());
    assert_eq!(doc["info"]["title"], "livemount appliance API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");

    // Exactly the routes of the code, each once, tagged, with its success and its parameters.
    let ops = operations(&doc);
    let documented: BTreeSet<(String, String)> = ops.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    let expected: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert!(
        documented == expected,
        "documented, not in the code: {:?}; in the code, not documented: {:?}",
        documented.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&documented).collect::<Vec<_>>()
    );
    assert_eq!(ops.len(), ROUTES.len());
    let mut ids = BTreeSet::new();
    for (method, path, op) in &ops {
        let at = format!("{method} {path}");
        assert!(ids.insert(op["operationId"].as_str().expect(&at).to_string()), "{at}: its operationId is taken");
        let tags = op["tags"].as_array().expect(&at);
        assert!(tags.len() == 1 && TAGS.contains(&tags[0].as_str().unwrap()), "{at}: tags {tags:?}");
        let responses = op["responses"].as_object().expect(&at);
        assert!(responses.contains_key("200") || responses.contains_key("202"), "{at}: no success documented");
        let in_path: BTreeSet<&str> = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
        let params: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(in_path, params, "{at}: the path's parameters");
        // The token routes are the local socket's only: no token asked; every other needs one remotely.
        if path.starts_with("/v1/tokens") {
            assert_eq!(op["security"], serde_json::json!([{}]), "{at}");
        } else {
            assert!(op.get("security").is_none() && responses.contains_key("401"), "{at}: the remote API's token");
        }
    }
    assert_eq!(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"].as_object().unwrap().len(), 1);
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap()
        .contains_key("application/openmetrics-text; version=1.0.0; charset=utf-8"));

    // Each documented route is served: the router has it. Its own 404 and 405 come with no body (checked
    // first), a handler's 404, for the made-up ids, with an ErrorBody.
    let (code, body) = local(&daemon, "GET", "/v1/no-such-route");
    assert!(code == 404 && body.is_empty(), "{code} {body:?}");
    let (code, _) = local(&daemon, "PUT", "/v1/mounts");
    assert_eq!(code, 405);
    for (method, path, _) in &ops {
        let probe: String =
            path.split('/').map(|s| if s.starts_with('{') { "openapi-probe" } else { s }).collect::<Vec<_>>().join("/");
        let (code, body) = local(&daemon, method, &probe);
        assert_ne!(code, 405, "{method} {probe}: the method is not served");
        if code == 404 {
            let error = serde_json::from_str::<serde_json::Value>(&body).ok();
            assert!(
                error.as_ref().is_some_and(|e| e["error"].is_string()),
                "{method} {probe}: not served (404 without an ErrorBody: {body:?})"
            );
        }
    }

    // The remote API serves the same document, behind its token like every route there.
    let out = daemon.cli().args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let addr = json(&out.stdout)["status"]["remote_api"].as_str().expect("remote API on").to_string();
    let (code, _) = tests::remote_get(&daemon, &addr, "/openapi.json", None);
    assert_eq!(code, 401, "the remote document needs a token");
    let out = daemon.cli().args(["token", "create", "reader"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (code, remote_text) = tests::remote_get(&daemon, &addr, "/openapi.json", Some(&token));
    assert_eq!(code, 200, "{remote_text}");
    assert!(remote_text == text, "the remote API's document differs from the local socket's");
    // It documents the token routes as the local socket's: the remote API does not serve them.
    let (code, _) = tests::remote_get(&daemon, &addr, "/v1/tokens", Some(&token));
    assert_eq!(code, 404, "the token routes are not served remotely");
}
