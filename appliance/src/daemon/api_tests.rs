//! The control API served for real on loopback TCP and called through the CLI's client: each kind of
//! failure comes back with its status and its message.

use std::sync::Arc;

use blockdev::engine::Engine;
use blockdev::fuse::FileView;
use blockdev::iscsi::Portal;
use dedup::ingest::DiskInput;

use super::super::boot::BootSettings;
use super::super::mounts::{Manager, Services};
use super::control_routes;
use crate::api_types::{MountInfo, MountRequest, TargetAccess};
use crate::client::{ApiAddr, Client, DaemonError};

/// A library with one backup named `test-backup` (one 1 MiB disk).
fn library_with_a_backup(dir: &std::path::Path) -> std::path::PathBuf {
    let lib_dir = dir.join("library");
    let lib = dedup::Library::init(&lib_dir, 64 << 10).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    let source = dedup::source::open(&disk).unwrap();
    let input = DiskInput { label: disk.display().to_string(), source, partition_table: None, parent: None };
    dedup::ingest::create_backup(&lib, Some("test-backup".into()), vec![input], &|_| {}).unwrap();
    lib_dir
}

fn failure(r: anyhow::Result<MountInfo>) -> (u16, String) {
    let e = r.expect_err("the daemon refuses");
    let d = e.downcast_ref::<DaemonError>().expect("an answer of the daemon");
    (d.status, d.message.clone())
}

fn request(backup: &str, name: Option<&str>) -> MountRequest {
    MountRequest {
        backup: backup.into(),
        name: name.map(String::from),
        read_only: false,
        access: TargetAccess::default(),
        boot: None,
        account: None,
    }
}

#[test]
fn errors_come_back_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let lib_dir = library_with_a_backup(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (addr, manager): (_, Arc<Manager>) = rt.block_on(async {
        let manager = Manager::new(
            &dir.path().join("state"),
            &dir.path().join("fuse"),
            &lib_dir,
            Services {
                engine: Engine::start_sync().unwrap(),
                view: FileView::new(),
                portal: Portal::new("127.0.0.1:3260".into()),
                boot: BootSettings {
                    http_base: "http://127.0.0.1:8080".into(),
                    packages_dir: dir.path().join("packages"),
                },
                cloud: Arc::new(crate::cloud::Cloud::open(&dir.path().join("state")).unwrap()),
                ebs_devices: dir.path().join("devices"),
                chunk_cache: None,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: axum::Router = control_routes(manager.clone()).into();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, manager)
    });
    let client = Client::to(ApiAddr::Tcp(addr), None, None).unwrap();

    let (status, message) = failure(client.get("/v1/mounts/nope"));
    assert_eq!(status, 404);
    assert!(message.contains("no mount nope"), "{message}");

    let (status, message) = failure(client.post("/v1/mounts", &request("no-such-backup", None)));
    assert_eq!(status, 404);
    assert!(message.contains("no backup no-such-backup"), "{message}");

    let (status, _) = failure(client.post("/v1/mounts", &serde_json::json!({ "name": 3 })));
    assert_eq!(status, 400);

    // Two mounts of one name: the name alone does not say which.
    let a: MountInfo = client.post("/v1/mounts", &request("test-backup", Some("twin"))).unwrap();
    let b: MountInfo = client.post("/v1/mounts", &request("test-backup", Some("twin"))).unwrap();
    let (status, message) = failure(client.get("/v1/mounts/twin"));
    assert_eq!(status, 409);
    assert!(message.contains("twin names 2 mounts"), "{message}");

    // A mount that is not browsed cannot be unbrowsed.
    let (status, message) = failure(client.delete(&format!("/v1/browse/{}", a.id)));
    assert_eq!(status, 409);
    assert!(message.contains("is not browsed"), "{message}");

    for m in [a, b] {
        let gone: MountInfo = client.delete(&format!("/v1/mounts/{}", m.id)).unwrap();
        assert_eq!(gone.id, m.id);
    }
    let left: Vec<MountInfo> = client.get("/v1/mounts").unwrap();
    assert!(left.is_empty());
    drop(manager);
}
