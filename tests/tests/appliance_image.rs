//! The access-node image end to end: built from the Debian package and booted in QEMU (TCG; user networking
//! restricted to this host, reached through `hostfwd`). On premises: configured on its first boot by a config
//! drive, then used as an operator would from outside: the remote API with a token, a backup of a disk image
//! copied in, a live mount read over iSCSI by QEMU's driver, a metrics scrape, and a reboot that finds the
//! mount back. In AWS (the local stand-in): published with `cloud image publish`, launched with a key pair
//! and user-data, and its snapshot booted with the instance metadata service answering for that instance:
//! it takes its configuration, SSH key and advertised address from there.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tests::aws::{aws_dir, Standin, SERVICE};
use tests::{json, livemount, livemount_bin, random_bytes, run, Daemon};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A 16 MiB FAT file system labelled CIDATA holding `files`: the appliance's config drive.
fn config_drive(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let img = dir.join("cidata.img");
    run(Command::new("truncate").args(["-s", "16M"]).arg(&img));
    run(Command::new("mkfs.vfat").args(["-n", "CIDATA"]).arg(&img));
    for (name, data) in files {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        run(Command::new("mcopy").arg("-i").arg(&img).arg(&path).arg(format!("::{name}")));
    }
    img
}

struct Vm {
    qemu: Child,
    console: PathBuf,
    ssh_port: u16,
    api_port: u16,
    iscsi_port: u16,
    key: PathBuf,
}

impl Vm {
    /// Boots `disk` (raw) with `drive` as a second, read-only disk; `net` is more of the user network's
    /// options (the guest reaches nothing but what they forward).
    fn start(dir: &Path, name: &str, disk: &Path, drive: Option<&Path>, net: &str, key: &Path) -> Vm {
        let (ssh_port, api_port, iscsi_port) = (free_port(), free_port(), free_port());
        let console = dir.join(format!("{name}-console.log"));
        let netdev = format!(
            "user,id=n0,restrict=on{net},hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{api_port}-:8443,hostfwd=tcp:127.0.0.1:{iscsi_port}-:3260"
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-m", "2048", "-smp", "2", "-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-drive")
            // The image itself stays as built (it is published afterwards): the VM's writes go to a temporary
            // overlay that lasts as long as QEMU, across the guest's reboots.
            .arg(format!("file={},format=raw,if=virtio,snapshot=on", disk.display()));
        if let Some(drive) = drive {
            qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio,readonly=on", drive.display()));
        }
        let qemu = qemu
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 is installed");
        Vm { qemu, console, ssh_port, api_port, iscsi_port, key: key.to_path_buf() }
    }

    /// Asks the guest to power off and waits (a while) for QEMU to end.
    fn power_off(mut self) {
        let _ = self.ssh("systemctl poweroff");
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.qemu.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn console(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(4000)..].iter().collect()
    }

    fn ssh(&self, command: &str) -> std::process::Output {
        Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i"])
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string(), "root@127.0.0.1", command])
            .output()
            .unwrap()
    }

    fn ssh_ok(&self, command: &str) -> String {
        let out = self.ssh(command);
        assert!(
            out.status.success(),
            "{command}: {}{}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.console()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `livemount` on this host, aimed at the appliance's remote API.
    fn remote(&self, cert: &Path, token: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(livemount_bin());
        c.arg("--api").arg(format!("https://127.0.0.1:{}", self.api_port)).arg("--ca-cert").arg(cert);
        c.env_remove("LIVEMOUNT_TOKEN");
        if let Some(t) = token {
            c.arg("--token").arg(t);
        }
        c.args(args).output().unwrap()
    }

    /// Waits until `ready` holds, or fails with the console.
    fn wait_for(&mut self, what: &str, limit: Duration, mut ready: impl FnMut(&Vm) -> bool) {
        let deadline = Instant::now() + limit;
        while !ready(self) {
            if let Some(status) = self.qemu.try_wait().unwrap() {
                panic!("QEMU ended ({status}) waiting for {what}:\n{}", self.console());
            }
            assert!(Instant::now() < deadline, "no {what} after {limit:?}:\n{}", self.console());
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

#[test]
fn the_access_node_image_serves_a_backup_on_premises_and_takes_its_settings_from_aws_instance_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let deb = tests::build_package(dir);
    let image = dir.join("appliance.img");
    run(Command::new(livemount_bin()).args(["image", "appliance"]).arg(&image).arg("--deb").arg(&deb));

    // First-boot settings: the remote API on, a token the host knows (the drive carries only its digest),
    // the host's SSH key.
    let token = format!("lmt_{}", hex::encode(random_bytes(3, 24)));
    let tokens = serde_json::json!([{
        "name": "host",
        "sha256": hex::encode(Sha256::digest(token.as_bytes())),
        "created": "2026-01-01T00:00:00Z",
    }]);
    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key));
    let config = "advertise = \"127.0.0.1\"\nportal = \"0.0.0.0:3260\"\n[remote_api]\nlisten = \"0.0.0.0:8443\"\n";
    let drive = config_drive(
        dir,
        &[
            ("livemount.toml", config.as_bytes()),
            ("tokens.json", tokens.to_string().as_bytes()),
            ("authorized_keys", &std::fs::read(key.with_extension("pub")).unwrap()),
        ],
    );

    let mut vm = Vm::start(dir, "on-premises", &image, Some(&drive), "", &key);
    let iscsi_port = vm.iscsi_port;

    // Booted with the daemon up: SSH answers with the drive's key, and the daemon's certificate is there.
    vm.wait_for("SSH", Duration::from_secs(600), |vm| vm.ssh("systemctl is-active livemount").status.success());
    let cert = dir.join("appliance.pem");
    std::fs::write(&cert, vm.ssh_ok("cat /var/lib/livemount/tls/cert.pem")).unwrap();

    // The remote API: refused without the token, answering with it.
    let refused = vm.remote(&cert, None, &["status"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs a token"));
    vm.wait_for("the remote API", Duration::from_secs(60), |vm| {
        vm.remote(&cert, Some(&token), &["status"]).status.success()
    });

    // A disk image copied in and backed up on the appliance, mounted from here.
    let disk = dir.join("disk.img");
    std::fs::write(&disk, random_bytes(11, 16 << 20)).unwrap();
    let copied = Command::new("scp")
        .args(["-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .arg("-i")
        .arg(&vm.key)
        .args(["-P", &vm.ssh_port.to_string()])
        .arg(&disk)
        .arg("root@127.0.0.1:/root/disk.img")
        .status()
        .unwrap();
    assert!(copied.success());
    let backup =
        json(vm.ssh_ok("livemount backup create /root/disk.img --json").as_bytes())["id"].as_str().unwrap().to_string();
    let out = vm.remote(&cert, Some(&token), &["mount", &backup, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mount = json(&out.stdout);
    let (mount_id, iqn) = (mount["id"].as_str().unwrap().to_string(), mount["iqn"].as_str().unwrap().to_string());

    let read_back = |vm: &Vm, name: &str| {
        let copy = dir.join(name);
        let url = format!("iscsi://127.0.0.1:{iscsi_port}/{iqn}/0");
        let out = Command::new("qemu-img").args(["convert", "-O", "raw", &url]).arg(&copy).output().unwrap();
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), vm.console());
        assert!(std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(), "the LUN reads back as the disk");
    };
    read_back(&vm, "copy1.img");

    // The scrape counts what was read.
    let metrics = Command::new("curl")
        .args(["-sSf", "--max-time", "60", "--cacert"])
        .arg(&cert)
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://127.0.0.1:{}/metrics", vm.api_port))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&metrics.stdout);
    let line = format!("livemount_disk_read_bytes_total{{mount=\"{mount_id}\",disk=\"0\"}} ");
    let read: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in:\n{page}"))
        .trim()
        .parse()
        .unwrap();
    assert!(read >= (16 << 20) as f64, "{read}");

    // A reboot: the daemon comes back by itself with the mount, which reads the same.
    let _ = vm.ssh("systemctl reboot");
    std::thread::sleep(Duration::from_secs(5));
    vm.wait_for("the remote API after the reboot", Duration::from_secs(600), |vm| {
        let out = vm.remote(&cert, Some(&token), &["mounts", "--json"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&mount_id)
    });
    read_back(&vm, "copy2.img");
    let first_boot = vm.ssh_ok("systemctl show -p ConditionResult livemount-first-boot");
    assert_eq!(first_boot.trim(), "ConditionResult=no", "the first-boot settings are taken once");

    // Revoked on the appliance: refused from here at once.
    vm.ssh_ok("livemount token revoke host");
    let refused = vm.remote(&cert, Some(&token), &["status"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not valid"));

    vm.power_off();

    in_aws(dir, &image, &key);
}

/// The same image as an AWS machine image: published by an appliance on this host into the stand-in,
/// launched with a key pair and user-data, and its snapshot booted with instance metadata for that instance.
fn in_aws(dir: &Path, image: &Path, key: &Path) {
    let standin = Standin::start(&dir.join("aws"), false);
    let host_dir = dir.join("host");
    std::fs::create_dir_all(&host_dir).unwrap();
    let lib = host_dir.join("library");
    livemount(&lib).args(["library", "init"]).assert().success();
    let host = Daemon::start_env(&host_dir, &lib, &[], &standin.env());
    let out = host.cli().args(["cloud", "image", "publish"]).arg(image).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), host.log());
    let published = json(&out.stdout);
    let (ami, snapshot) = (published["image_id"].as_str().unwrap(), published["snapshot_id"].as_str().unwrap());

    let user_data = dir.join("user-data.toml");
    std::fs::write(&user_data, "portal = \"0.0.0.0:3260\"\n[remote_api]\nlisten = \"0.0.0.0:8443\"\n").unwrap();
    let launched = standin.awsq(&[
        "launch",
        SERVICE,
        "--image",
        ami,
        "--key-file",
        key.with_extension("pub").to_str().unwrap(),
        "--user-data",
        user_data.to_str().unwrap(),
    ]);
    let instance = launched["instance"].as_str().unwrap();
    let private_ip =
        standin.awsq(&["instance", SERVICE, instance])["private_ip"].as_str().unwrap_or_default().to_string();

    // The instance's root disk: the image's snapshot as EBS direct gives it back.
    let root = dir.join("instance-root.img");
    standin.awsq(&["read-snapshot", SERVICE, snapshot, root.to_str().unwrap()]);
    let imds_log = dir.join("imds.jsonl");
    let imds = format!(
        "{} --endpoint {} --account {SERVICE} --instance {instance} --log {}",
        aws_dir().join("imds").display(),
        standin.url,
        imds_log.display()
    );
    let net = format!(",net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:{imds}");
    let mut vm = Vm::start(dir, "aws", &root, None, &net, key);

    // SSH lets the launch key pair in: the first boot took it from the instance metadata, with the
    // configuration (the user-data) and the instance's private address as the advertised one.
    vm.wait_for("SSH with the launch key", Duration::from_secs(600), |vm| {
        vm.ssh("systemctl is-active livemount").status.success()
    });
    let requests = std::fs::read_to_string(&imds_log).unwrap_or_default();
    for path in ["/latest/user-data", "/latest/meta-data/public-keys/0/openssh-key", "/latest/meta-data/local-ipv4"] {
        let asked = format!("\"path\": \"{path}\", \"status\": 200, \"token\": true");
        assert!(requests.contains(&asked), "{path} asked with an IMDSv2 token: {requests}");
    }
    let config = vm.ssh_ok("cat /etc/livemount/livemount.toml");
    assert!(config.contains(&format!("advertise = \"{private_ip}\"")), "{config}");
    let token = vm.ssh_ok("livemount token create operator").trim().to_string();
    let cert = dir.join("aws-appliance.pem");
    std::fs::write(&cert, vm.ssh_ok("cat /var/lib/livemount/tls/cert.pem")).unwrap();
    vm.wait_for("the remote API", Duration::from_secs(60), |vm| {
        vm.remote(&cert, Some(&token), &["status"]).status.success()
    });
    let status = json(&vm.remote(&cert, Some(&token), &["status", "--json"]).stdout);
    assert_eq!(status["status"]["portal"], format!("{private_ip}:3260"), "{status}");
    vm.power_off();
}
