//! Operating the appliance: its configuration file, the control API from another machine (TLS and bearer
//! tokens), the Prometheus metrics a scrape sees after an iSCSI read by QEMU, `livemount status`, and the
//! systemd notifications (ready, watchdog) a packaged daemon sends.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::{json, livemount, random_bytes, Daemon};

/// A library with one backup of a 24 MiB disk of random bytes; gives (library, backup id, the disk).
fn library_with_a_backup(dir: &Path) -> (PathBuf, String, PathBuf) {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, random_bytes(7, 24 << 20)).unwrap();
    let lib = dir.join("library");
    livemount(&lib).args(["library", "init", "--chunk-size", "64K"]).assert().success();
    let out = livemount(&lib).args(["backup", "create", "--json"]).arg(&disk).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (lib, json(&out.stdout)["id"].as_str().unwrap().to_string(), disk)
}

/// `livemount` aimed at the daemon's remote API, trusting its self-signed certificate.
fn remote(daemon: &Daemon, addr: &str, token: Option<&str>) -> assert_cmd::Command {
    let mut c = livemount(&daemon.library);
    c.arg("--api").arg(format!("https://{addr}")).arg("--ca-cert").arg(daemon.state_dir().join("tls/cert.pem"));
    c.env_remove("LIVEMOUNT_TOKEN");
    if let Some(t) = token {
        c.arg("--token").arg(t);
    }
    c
}

/// The value of the sample `name{labels}` in a Prometheus text page (labels given in the page's order).
fn sample(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn the_remote_api_needs_a_live_token_and_metrics_count_an_iscsi_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, backup, disk) = library_with_a_backup(dir);
    let config = dir.join("livemount.toml");
    std::fs::write(&config, "chunk_cache_size = \"64M\"\n[remote_api]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let daemon = Daemon::start_with(dir, &lib, &["--config", config.to_str().unwrap()]);

    // The remote API is on (from the file) and shows where it listens.
    let out = daemon.cli().args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let addr = json(&out.stdout)["status"]["remote_api"].as_str().expect("remote API on").to_string();

    // Without a token, with a made-up one: refused, saying why.
    let out = remote(&daemon, &addr, None).arg("status").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, _) = tests::remote_get(&daemon, &addr, "/metrics", Some("lmt_0000000000000000000000000000000000000000"));
    assert_eq!(code, 401);
    let (code, _) = tests::remote_get(&daemon, &addr, "/v1/mounts", None);
    assert_eq!(code, 401);

    // A token made on the appliance works from afar, for everything but the tokens themselves.
    let out = daemon.cli().args(["token", "create", "ci"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = remote(&daemon, &addr, Some(&token)).args(["mount", &backup, "--read-only", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), daemon.log());
    let mount = json(&out.stdout);
    let (id, url) = (mount["id"].as_str().unwrap(), mount["disks"][0]["iscsi_url"].as_str().unwrap());
    let out = remote(&daemon, &addr, Some(&token)).args(["token", "create", "sneaky"]).output().unwrap();
    assert!(!out.status.success(), "tokens are made on the appliance only");

    // QEMU's iSCSI driver reads the whole LUN: the bytes of the backup.
    let copy = dir.join("copy.img");
    let out = Command::new("qemu-img").args(["convert", "-O", "raw", url]).arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(), "the LUN reads back as the backup");

    // The scrape sees the reads: bytes, latency, iSCSI commands by opcode.
    let (code, page) = tests::remote_get(&daemon, &addr, "/metrics", Some(&token));
    assert_eq!(code, 200, "{page}");
    let labels = format!("{{mount=\"{id}\",disk=\"0\"}}");
    let read = sample(&page, &format!("livemount_disk_read_bytes_total{labels}")).unwrap_or_else(|| panic!("{page}"));
    assert!(read >= (24 << 20) as f64, "read {read}: {page}");
    let recalled = sample(&page, &format!("livemount_disk_recalled_bytes_total{labels}")).unwrap();
    assert!(recalled > 0.0, "{page}");
    let reads = sample(&page, &format!("livemount_disk_read_seconds_count{labels}")).unwrap();
    assert!(reads >= 1.0, "{page}");
    let read10 = ["0x28", "0x88"]
        .iter()
        .filter_map(|op| sample(&page, &format!("livemount_iscsi_commands_total{{opcode=\"{op}\",command=\"Read\"}}")))
        .sum::<f64>();
    assert!(read10 >= 1.0, "READ commands counted: {page}");
    assert!(page.contains("livemount_library_backups 1"), "{page}");
    assert!(page.trim_end().ends_with("# EOF"), "an OpenMetrics page ends so");

    // `status` over the remote API shows the mount; revoking the token shuts the door at once.
    let out = remote(&daemon, &addr, Some(&token)).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(id) && text.contains("1 mounts"), "{text}");
    daemon.cli().args(["token", "revoke", "ci"]).assert().success();
    let out = remote(&daemon, &addr, Some(&token)).arg("status").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, _) = tests::remote_get(&daemon, &addr, "/metrics", Some(&token));
    assert_eq!(code, 401);
}

#[test]
fn a_configuration_mistake_is_named_its_accounts_are_taken_and_a_token_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, _, _) = library_with_a_backup(dir);
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "portl = \"0.0.0.0:3260\"\n").unwrap();
    let out = livemount(&lib).args(["serve", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("portl") && err.contains("bad.toml"), "{err}");

    let config = dir.join("livemount.toml");
    let role = "arn:aws:iam::111111111111:role/livemount-access";
    std::fs::write(
        &config,
        format!("[remote_api]\nlisten = \"127.0.0.1:0\"\n[[accounts]]\nname = \"prod\"\nrole_arn = \"{role}\"\n"),
    )
    .unwrap();
    let mut daemon = Daemon::start_with(dir, &lib, &["--config", config.to_str().unwrap()]);
    let accounts = daemon.cli().args(["cloud", "account", "list", "--json"]).output().unwrap();
    let accounts = json(&accounts.stdout);
    let prod = accounts.as_array().unwrap().iter().find(|a| a["name"] == "prod").expect("the declared account");
    assert_eq!(prod["role_arn"], role);
    let out = daemon.cli().args(["token", "create", "ops"]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let cert = std::fs::read(daemon.state_dir().join("tls/cert.pem")).unwrap();
    daemon.restart();
    let out = daemon.cli().args(["status", "--json"]).output().unwrap();
    let addr = json(&out.stdout)["status"]["remote_api"].as_str().unwrap().to_string();
    assert_eq!(std::fs::read(daemon.state_dir().join("tls/cert.pem")).unwrap(), cert, "the same certificate");
    remote(&daemon, &addr, Some(&token)).arg("status").assert().success();
    let listed = daemon.cli().args(["token", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("ops"));
    let kept = std::fs::read_to_string(daemon.state_dir().join("tokens.json")).unwrap();
    assert!(!kept.contains(&token), "only the token's digest is kept");
}

#[test]
fn under_systemd_the_daemon_says_ready_and_pings_the_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (lib, _, _) = library_with_a_backup(dir);
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let env = [
        ("NOTIFY_SOCKET".to_string(), socket_path.display().to_string()),
        ("WATCHDOG_USEC".to_string(), "400000".to_string()),
    ];
    let _daemon = Daemon::start_env(dir, &lib, &[], &env);
    let (mut ready, mut pings) = (false, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && !(ready && pings >= 3) {
        let n = socket.recv(&mut buf).expect("the daemon notifies systemd");
        let msg = String::from_utf8_lossy(&buf[..n]);
        ready |= msg.lines().any(|l| l == "READY=1");
        pings += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
    }
    assert!(ready, "READY=1 sent");
    assert!(pings >= 3, "{pings} watchdog pings in 10 s at a 0.4 s watchdog");
}
