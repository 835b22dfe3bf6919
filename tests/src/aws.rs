//! The local AWS stand-in (`tests/aws/standin`: moto extended as AWS documents it) for end-to-end tests,
//! and `tests/aws/awsq`, the independent client (boto3) that checks what it holds.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// moto's default account: the appliance's service account in the tests.
pub const SERVICE: &str = "123456789012";
/// The member account, reached by AssumeRole.
pub const MEMBER: &str = "111111111111";
pub const MEMBER_ROLE: &str = "arn:aws:iam::111111111111:role/livemount-access";

pub fn aws_dir() -> PathBuf {
    crate::tests_dir().join("aws")
}

/// A stand-in on a free port of 127.0.0.1, stopped when dropped.
pub struct Standin {
    child: std::process::Child,
    pub url: String,
}

impl Standin {
    /// Starts it with its data under `data`; `stock` leaves moto as it is.
    pub fn start(data: &Path, stock: bool) -> Standin {
        let mut cmd = Command::new(aws_dir().join("standin"));
        cmd.args(["--port", "0", "--data"]).arg(data);
        if stock {
            cmd.arg("--stock");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tests/aws/standin starts (pip install 'moto[server]==5.2.1')");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the stand-in did not start: {line:?}"));
        Standin { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// The environment that aims the AWS SDK at the stand-in with dummy credentials, and nowhere else.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A control endpoint (`/standin/...`), with a JSON body for POST.
    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-X", method, "-H", "Content-Type: application/json"]).arg(format!("{}{path}", self.url));
        if let Some(b) = body {
            cmd.args(["--data", &b.to_string()]);
        }
        let out = crate::run(&mut cmd);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    }

    /// Makes calls of `action` fail as `rule` says (see tests/aws/README.md, "faults").
    pub fn fault(&self, rule: Value) {
        self.control("POST", "/standin/faults", Some(&rule));
    }

    pub fn clear_faults(&self) {
        self.control("DELETE", "/standin/faults", None);
    }

    /// How often `action` was called in `account`.
    pub fn calls(&self, action: &str, account: &str) -> u64 {
        let c = self.control("GET", "/standin/counters", None);
        c["actions"][action][account].as_u64().unwrap_or(0)
    }

    /// `awsq` with these arguments, its JSON answer.
    pub fn awsq(&self, args: &[&str]) -> Value {
        let out = crate::run(Command::new(aws_dir().join("awsq")).args(["--endpoint", &self.url]).args(args));
        crate::json(out.as_bytes())
    }

    /// Every resource of `account` (instances not terminated, volumes, images, tagged snapshots), or only
    /// those with tag `key=value`.
    pub fn resources(&self, account: &str, tag: Option<&str>) -> Vec<Value> {
        let mut args = vec!["resources", account];
        if let Some(t) = tag {
            args.extend(["--tag", t]);
        }
        self.awsq(&args).as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
