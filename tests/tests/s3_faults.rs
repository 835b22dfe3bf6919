//! A library in S3 when S3 says no or the way to it fails: access denied by a bucket policy (on the AWS
//! stand-in), a bucket in another region than the client's (the stand-in behind a front that answers as S3
//! does, since moto serves any region), and a network that drops mid-upload or mid-answer (a relay in front
//! of SeaweedFS).
//! Each time the user gets one line naming the object and what to do, and the library is left as it was:
//! no backup half there, older backups whole, and the same backup done again once the fault is gone.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tests::aws::{Standin, MEMBER, SERVICE};
use tests::relay::{Cut, Relay, WrongRegion};
use tests::{json, livemount, random_bytes, Backend};

/// `livemount --library LIB` with exactly the AWS environment given (none of the caller's) and its local
/// copies under `cache`.
fn lm(lib: &str, env: &[(String, String)], cache: &Path) -> assert_cmd::Command {
    let mut c = livemount(Path::new(lib));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().map(|(k, v)| (k, v))).env("LIVEMOUNT_CACHE", cache);
    c
}

/// `env` with `key` set to `value`.
fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    out.push((key.to_string(), value.to_string()));
    out
}

/// The one line a failed command printed (it must fail, and print one line that is not the SDK's debug
/// output).
fn one_line(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    println!("{err}");
    assert!(!out.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for opaque in
        ["unhandled error", "service error", "Unhandled", "ErrorMetadata", "DispatchFailure(", "Os {", "panicked"]
    {
        assert!(!err.contains(opaque), "the SDK's own words, not an explanation: {err}");
    }
    err
}

/// Whether a line says that access was denied (S3's "Access Denied", or the product's words for a bare 403).
fn says_denied(err: &str) -> bool {
    err.to_lowercase().contains("access denied")
}

fn backup_id(cmd: &mut assert_cmd::Command, disk: &Path) -> String {
    let out = cmd.args(["backup", "create", "--json"]).arg(disk).output().unwrap();
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    json(&out.stdout)["id"].as_str().unwrap().to_string()
}

fn listed(cmd: &mut assert_cmd::Command) -> Vec<String> {
    let out = cmd.args(["backup", "list", "--json"]).output().unwrap();
    assert!(out.status.success(), "backup list failed: {}", String::from_utf8_lossy(&out.stderr));
    json(&out.stdout).as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

fn image(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(seed, mib << 20)).unwrap();
    p
}

fn restores_identical(cmd: &mut assert_cmd::Command, id: &str, original: &Path) {
    let dest = original.with_extension("restored");
    cmd.args(["backup", "restore", id]).arg(&dest).assert().success();
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(original).unwrap(), "restore of {id} differs");
    std::fs::remove_file(dest).unwrap();
}

/// A bucket policy of the service account's bucket `bucket` that lets the member account do anything with it
/// except the `denied` (IAM action, resource under the library's prefix).
fn member_policy(bucket: &str, denied: &[(&str, &str)]) -> String {
    let member = format!("arn:aws:iam::{MEMBER}:root");
    let mut statements = vec![json!({
        "Effect": "Allow",
        "Principal": {"AWS": member},
        "Action": "s3:*",
        "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
    })];
    for (action, under) in denied {
        statements.push(json!({
            "Effect": "Deny",
            "Principal": {"AWS": member},
            "Action": action,
            "Resource": format!("arn:aws:s3:::{bucket}/site-a/library/{under}"),
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// Keys of the objects in a bucket, as its owner lists them with an independent client (boto3), and its
/// unfinished multipart uploads.
fn bucket_contents(standin: &Standin, bucket: &str) -> (Vec<String>, Vec<Value>) {
    let held = standin.awsq(&["s3", SERVICE, bucket]);
    let keys = held["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap().to_string()).collect();
    (keys, held["uploads"].as_array().unwrap().clone())
}

/// Only the backups listed have objects under `backups/`, no backup is registered as running, and no
/// multipart upload is left unfinished.
fn nothing_half_written(keys: &[String], uploads: &[Value], prefix: &str, backups: &[String]) {
    assert!(uploads.is_empty(), "unfinished multipart uploads: {uploads:?}");
    for k in keys {
        let Some(name) = k.strip_prefix(prefix) else { continue };
        assert!(!name.starts_with("running/"), "a registration is left behind: {k}");
        if let Some(rest) = name.strip_prefix("backups/") {
            assert!(backups.iter().any(|id| rest.starts_with(&format!("{id}/"))), "half a backup is left: {k}");
        }
    }
}

/// A member account's appliance uses a library in the service account's bucket, as the bucket policy lets
/// it. On the stand-in, whose S3 extension evaluates bucket policies for requests from another account than
/// the bucket's owner as AWS does (AccessDenied with its error document). moto itself would not: it applies
/// only a policy's Deny, to requests of any account, and with an empty 403 (the next test).
#[test]
fn a_bucket_policy_that_denies_the_member_account_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let standin = Standin::start(&dir.path().join("aws"), false);
    let bucket = "shared-lib";
    standin.awsq(&["bucket", SERVICE, bucket]);
    standin.awsq(&["put-policy", SERVICE, bucket, &member_policy(bucket, &[])]);
    // The member account's credentials (assumed role), as its appliance would have them.
    let mut env = standin.env();
    for (k, v) in standin.awsq(&["credentials", MEMBER]).as_object().unwrap() {
        env = with(&env, k, v.as_str().unwrap());
    }
    let lib = "s3://shared-lib/site-a/library";
    let prefix = "site-a/library/";
    let at = || lm(lib, &env, &cache);
    at().args(["library", "init", "--chunk-size", "64K"]).assert().success();
    let first_disk = image(dir.path(), "first.img", 4, 1);
    let first = backup_id(&mut at(), &first_disk);

    // Writes under backups/ are denied: the chunks go up, the backup cannot be published.
    standin.awsq(&["put-policy", SERVICE, bucket, &member_policy(bucket, &[("s3:PutObject", "backups/*")])]);
    let second_disk = image(dir.path(), "second.img", 4, 2);
    let err = one_line(at().args(["backup", "create"]).arg(&second_disk));
    assert!(
        err.contains("s3://shared-lib/site-a/library/backups/")
            && err.contains("AccessDenied")
            && says_denied(&err)
            && err.contains("bucket's policy"),
        "{err}"
    );
    assert_eq!(listed(&mut at()), vec![first.clone()], "no new backup is listed");
    let (keys, uploads) = bucket_contents(&standin, bucket);
    nothing_half_written(&keys, &uploads, prefix, std::slice::from_ref(&first));
    at().args(["backup", "verify"]).assert().success();

    // Reads under backups/ are denied: listing and verifying say which object could not be read, and why.
    standin.awsq(&["put-policy", SERVICE, bucket, &member_policy(bucket, &[("s3:GetObject", "backups/*")])]);
    let err = one_line(at().args(["backup", "list"]));
    let manifest = format!("s3://shared-lib/site-a/library/backups/{first}/manifest.json");
    assert!(err.contains(&manifest) && err.contains("AccessDenied") && says_denied(&err), "{err}");
    let err = one_line(at().args(["backup", "verify"]));
    assert!(err.contains("s3://shared-lib/site-a/library/backups/") && says_denied(&err), "{err}");

    // Allowed again: the refused backup goes through, and both restore bit-identical.
    standin.awsq(&["put-policy", SERVICE, bucket, &member_policy(bucket, &[])]);
    let second = backup_id(&mut at(), &second_disk);
    assert_eq!(listed(&mut at()).len(), 2);
    at().args(["backup", "verify"]).assert().success();
    restores_identical(&mut at(), &first, &first_disk);
    restores_identical(&mut at(), &second, &second_disk);
}

/// The bucket's owner denies itself writes (or reads) of the packs with a bucket policy's Deny. moto
/// enforces that Deny for every caller, but answers with a bare 403 and no error document (where AWS sends
/// AccessDenied): the SDK then has no error code, and the user must still be told that access was denied.
#[test]
fn a_bucket_policy_deny_answered_with_a_bare_403_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let standin = Standin::start(&dir.path().join("aws"), false);
    let bucket = "libs";
    standin.awsq(&["bucket", SERVICE, bucket]);
    let env = standin.env();
    let lib = "s3://libs/site-a/library";
    let at = || lm(lib, &env, &cache);
    at().args(["library", "init", "--chunk-size", "64K"]).assert().success();
    let first_disk = image(dir.path(), "first.img", 4, 3);
    let first = backup_id(&mut at(), &first_disk);
    let deny = |action: &str| {
        json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny",
            "Principal": "*",
            "Action": action,
            "Resource": "arn:aws:s3:::libs/site-a/library/packs/*",
        }]})
        .to_string()
    };

    standin.awsq(&["put-policy", SERVICE, bucket, &deny("s3:PutObject")]);
    let second_disk = image(dir.path(), "second.img", 4, 4);
    let err = one_line(at().args(["backup", "create"]).arg(&second_disk));
    assert!(err.contains("s3://libs/site-a/library/packs/") && err.contains("403") && says_denied(&err), "{err}");
    assert_eq!(listed(&mut at()), vec![first.clone()], "no new backup is listed");
    let (keys, uploads) = bucket_contents(&standin, bucket);
    nothing_half_written(&keys, &uploads, "site-a/library/", std::slice::from_ref(&first));
    at().args(["backup", "verify"]).assert().success();

    // Reads of the packs denied: the backups are listed (their manifests are elsewhere), their data cannot
    // be read, and restore and verify say which pack and why.
    standin.awsq(&["put-policy", SERVICE, bucket, &deny("s3:GetObject")]);
    assert_eq!(listed(&mut at()), vec![first.clone()]);
    let err = one_line(at().args(["backup", "restore", &first]).arg(dir.path().join("r.img")));
    assert!(err.contains("s3://libs/site-a/library/packs/") && says_denied(&err), "{err}");
    let err = one_line(at().args(["backup", "verify"]));
    assert!(err.contains("s3://libs/site-a/library/packs/") && says_denied(&err), "{err}");

    // Lifted: the refused backup goes through.
    standin.awsq(&["put-policy", SERVICE, bucket, r#"{"Version": "2012-10-17", "Statement": []}"#]);
    let second = backup_id(&mut at(), &second_disk);
    at().args(["backup", "verify"]).assert().success();
    restores_identical(&mut at(), &second, &second_disk);
}

/// The library's bucket is in eu-west-1 and the client is set for us-east-1 (and the reverse). AWS then
/// answers 301 PermanentRedirect (a request sent to another region's endpoint) or 400
/// AuthorizationHeaderMalformed (one signed for another region); the SDK follows neither. moto serves the
/// bucket whatever region a request is signed for, so a front on 127.0.0.1 answers as AWS does and passes
/// the requests signed for the bucket's region on to the stand-in.
#[test]
fn a_bucket_in_another_region_gets_the_region_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let standin = Standin::start(&dir.path().join("aws"), false);
    standin.awsq(&["bucket", SERVICE, "eu-lib", "--location", "eu-west-1"]);
    standin.awsq(&["bucket", SERVICE, "us-lib"]);
    let front = Relay::start(&standin.url);
    let via_front = with(&standin.env(), "AWS_ENDPOINT_URL", &front.url());
    let (in_eu, in_us) = (with(&via_front, "AWS_REGION", "eu-west-1"), with(&via_front, "AWS_REGION", "us-east-1"));
    let (eu_lib, us_lib) = ("s3://eu-lib/lib", "s3://us-lib/lib");
    let disk = image(dir.path(), "disk.img", 2, 5);

    for answer in [WrongRegion::Redirect, WrongRegion::Malformed] {
        front.bucket_region("eu-lib", "eu-west-1", answer);
        front.bucket_region("us-lib", "us-east-1", answer);
        let answered = front.wrong_region_answers();
        if answer == WrongRegion::Redirect {
            // Set for the bucket's region, everything works through the front.
            lm(eu_lib, &in_eu, &cache).args(["library", "init", "--chunk-size", "64K"]).assert().success();
            backup_id(&mut lm(eu_lib, &in_eu, &cache), &disk);
        }
        let err = one_line(lm(eu_lib, &in_us, &cache).args(["backup", "list"]));
        assert!(err.contains("s3://eu-lib/lib/") && err.contains("set AWS_REGION=eu-west-1"), "{answer:?}: {err}");
        let err = one_line(lm(eu_lib, &in_us, &cache).args(["backup", "create"]).arg(&disk));
        assert!(err.contains("s3://eu-lib/lib/") && err.contains("set AWS_REGION=eu-west-1"), "{answer:?}: {err}");
        let err = one_line(lm(us_lib, &in_eu, &cache).args(["library", "init"]));
        assert!(err.contains("s3://us-lib/lib/") && err.contains("set AWS_REGION=us-east-1"), "{answer:?}: {err}");
        assert!(front.wrong_region_answers() >= answered + 3, "the front answered for the wrong region");
    }
    // Only the backup made in the right region is there, and the other library was never made.
    let ids = listed(&mut lm(eu_lib, &in_eu, &cache));
    assert_eq!(ids.len(), 1, "{ids:?}");
    restores_identical(&mut lm(eu_lib, &in_eu, &cache), &ids[0], &disk);
    let (keys, _) = bucket_contents(&standin, "us-lib");
    assert!(keys.is_empty(), "{keys:?}");
}

/// Unfinished multipart uploads in the SeaweedFS bucket, asked with boto3 (an independent client) through
/// the test's environment (`tests::new_library` aimed it at the cluster).
fn seaweed_uploads(store: &tests::seaweed::SeaweedFs, bucket: &str) -> Vec<String> {
    let script = r#"
import json, os, sys
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
print(json.dumps([u["Key"] for u in s3.list_multipart_uploads(Bucket=sys.argv[2]).get("Uploads", [])]))
"#;
    let out = tests::run(Command::new("python3").args(["-c", script, &store.endpoint(), bucket]));
    serde_json::from_str(&out).unwrap()
}

/// A SeaweedFS library (its environment in this test process) and its names.
struct Seaweed {
    lib: tests::TestLib,
    cache: PathBuf,
}

impl Seaweed {
    fn new(dir: &Path) -> Seaweed {
        let lib = tests::new_library(Backend::S3, dir, "64K");
        Seaweed { lib, cache: dir.join("cache") }
    }

    fn url(&self) -> &str {
        self.lib.location.to_str().unwrap()
    }

    /// `livemount` aimed at the store directly.
    fn direct(&self) -> assert_cmd::Command {
        let mut c = livemount(&self.lib);
        c.env("LIVEMOUNT_CACHE", &self.cache);
        c
    }

    /// `livemount` aimed at the store through `relay`.
    fn through(&self, relay: &Relay) -> assert_cmd::Command {
        let mut c = self.direct();
        c.env("AWS_ENDPOINT_URL", relay.url());
        c
    }

    fn store(&self) -> &tests::seaweed::SeaweedFs {
        self.lib.store.as_ref().unwrap()
    }

    /// Names of the library's objects under `sub` (read directly).
    fn objects(&self, sub: &str) -> Vec<String> {
        let url = dedup::s3::S3Url::parse(self.url()).unwrap().unwrap();
        let objects = dedup::s3::S3Objects::connect(&url).unwrap();
        objects.list(sub).unwrap().into_iter().map(|o| o.name).collect()
    }
}

/// A disk whose packs (16 MiB) go up in parts (8 MiB), backed up while connections are cut mid-body a few
/// times, reset or closed: the SDK tries again on a new connection and the backup completes, whole.
#[test]
fn uploads_cut_mid_body_a_few_times_are_retried_and_the_backup_completes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Seaweed::new(dir.path());
    let relay = Relay::start(&s.store().endpoint());
    let mut made = Vec::new();
    for (n, how) in [Cut::Reset, Cut::Close].into_iter().enumerate() {
        let disk = image(dir.path(), &format!("disk{n}.img"), 40, 10 + n as u64);
        let before = relay.cuts();
        relay.cut_requests_after(1 << 20, Some(3), how);
        let id = backup_id(&mut s.through(&relay), &disk);
        assert_eq!(relay.cuts() - before, 3, "{how:?}: the relay cut three connections mid-upload");
        made.push((id, disk));
    }
    relay.heal();
    assert_eq!(listed(&mut s.direct()).len(), 2);
    s.direct().args(["backup", "verify"]).assert().success();
    for (id, disk) in &made {
        restores_identical(&mut s.direct(), id, disk);
    }
    assert!(seaweed_uploads(s.store(), "backups").is_empty(), "no multipart upload is left unfinished");
}

/// Every connection that carries more than 1 MiB toward the store is cut: no pack can go up however often
/// it is tried. The backup fails with one line naming the pack; the older backup is untouched, nothing of the
/// failed one is listed or left registered, and once the network is back the same backup completes.
#[test]
fn a_network_that_keeps_dropping_mid_upload_fails_the_backup_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Seaweed::new(dir.path());
    let old_disk = image(dir.path(), "old.img", 4, 20);
    let old = backup_id(&mut s.direct(), &old_disk);
    let relay = Relay::start(&s.store().endpoint());
    relay.cut_requests_after(1 << 20, None, Cut::Reset);
    let disk = image(dir.path(), "disk.img", 40, 21);
    let started = std::time::Instant::now();
    let err = one_line(s.through(&relay).args(["backup", "create"]).arg(&disk));
    println!("failed after {:.1} s, {} cuts: {err}", started.elapsed().as_secs_f64(), relay.cuts());
    assert!(
        err.contains("s3://backups/site-a/library/packs/")
            && err.contains(".pack")
            && err.contains("the connection to the store failed, also when tried again"),
        "{err}"
    );
    assert!(relay.cuts() >= 5, "every attempt was cut ({} cuts)", relay.cuts());

    assert_eq!(listed(&mut s.direct()), vec![old.clone()], "no new backup is listed");
    assert!(s.objects("running/").is_empty(), "a registration is left behind");
    let backups = s.objects("backups/");
    assert!(backups.iter().all(|o| o.starts_with(&format!("backups/{old}/"))), "{backups:?}");
    assert!(seaweed_uploads(s.store(), "backups").is_empty(), "no multipart upload is left unfinished");
    s.direct().args(["backup", "verify"]).assert().success();
    restores_identical(&mut s.direct(), &old, &old_disk);

    relay.heal();
    let id = backup_id(&mut s.through(&relay), &disk);
    assert_eq!(listed(&mut s.direct()).len(), 2);
    s.direct().args(["backup", "verify"]).assert().success();
    restores_identical(&mut s.direct(), &id, &disk);
}

/// Reads whose answers are cut mid-body a few times (a restore reads packs in spans of up to 8 MiB): the
/// answer had begun, so the SDK does not try again by itself; the read must be tried again all the same, and
/// the restore comes out whole. Cut every time, the restore fails with one line naming the pack.
#[test]
fn answers_cut_mid_body_a_few_times_are_read_again_and_the_restore_completes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Seaweed::new(dir.path());
    let disk = image(dir.path(), "disk.img", 40, 30);
    let id = backup_id(&mut s.direct(), &disk);
    let relay = Relay::start(&s.store().endpoint());
    for how in [Cut::Reset, Cut::Close] {
        // A cache of its own each time: every chunk is read from the store, none from this machine.
        let cache = dir.path().join(format!("cache-{how:?}"));
        let before = relay.cuts();
        relay.cut_answers_after(1 << 20, Some(3), how);
        restores_identical(s.through(&relay).env("LIVEMOUNT_CACHE", &cache), &id, &disk);
        assert_eq!(relay.cuts() - before, 3, "{how:?}: the relay cut three answers mid-body");
    }
    // Every answer of more than 1 MiB cut, however often it is asked for: one line naming the pack.
    relay.cut_answers_after(1 << 20, None, Cut::Reset);
    let cache = dir.path().join("cache-cut");
    let err = one_line(
        s.through(&relay).env("LIVEMOUNT_CACHE", &cache).args(["backup", "restore", &id]).arg(dir.path().join("r.img")),
    );
    assert!(
        err.contains("s3://backups/site-a/library/packs/")
            && err.contains(".pack")
            && err.contains("cut short each time"),
        "{err}"
    );
    relay.heal();
    s.through(&relay).args(["backup", "verify"]).assert().success();
}
