//! The daemon's configuration file (`/etc/livemount/livemount.toml`): every setting of `livemount serve`, so
//! that a packaged appliance is configured in one place. A flag on the command line wins over the file; the
//! file wins over the built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Where the package installs the configuration, and where `serve` looks when not told.
pub const DEFAULT_CONFIG: &str = "/etc/livemount/livemount.toml";

/// The file's settings; every one may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A folder, or s3://BUCKET/PREFIX.
    pub library: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub fuse_root: Option<PathBuf>,
    pub portal: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub advertise: Option<String>,
    /// A size such as "4G".
    pub chunk_cache_size: Option<String>,
    pub guest_packages: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    pub remote_api: Option<RemoteApiConfig>,
    /// Member accounts (`[[accounts]]`), as `cloud account add` takes them; the file's settings win over
    /// those added before under the same name.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub role_arn: String,
    pub external_id: Option<String>,
    pub region: Option<String>,
}

/// The control API on TCP with TLS and bearer tokens (off unless configured).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteApiConfig {
    pub listen: SocketAddr,
    /// PEM files of the certificate chain and its key; when both are left out, a self-signed pair is made
    /// under the state folder on first start.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Config {
    /// Reads `path`. A missing file is an empty configuration only at the default place (an appliance
    /// started by hand need not have one); a file named on the command line must exist.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_CONFIG) => {
                return Ok(Config::default())
            }
            Err(e) => return Err(e).with_context(|| format!("reading the configuration {}", path.display())),
        };
        Config::parse(&text).with_context(|| format!("in the configuration {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        if let Some(size) = &config.chunk_cache_size {
            crate::output::parse_size(size).map_err(|e| anyhow::anyhow!("chunk_cache_size: {e}"))?;
        }
        Ok(config)
    }

    /// The chunk cache's bound, when the file sets it.
    pub fn chunk_cache_bytes(&self) -> Option<u64> {
        // Checked when the file was read.
        self.chunk_cache_size.as_deref().and_then(|s| crate::output::parse_size(s).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_is_read_and_mistakes_are_named() {
        let c = Config::parse(
            r#"
            library = "s3://bucket/lib"
            portal = "0.0.0.0:3260"
            chunk_cache_size = "8G"
            [remote_api]
            listen = "0.0.0.0:8443"
            [[accounts]]
            name = "prod"
            role_arn = "arn:aws:iam::111111111111:role/livemount-access"
            "#,
        )
        .unwrap();
        assert_eq!(c.library.unwrap(), PathBuf::from("s3://bucket/lib"));
        assert_eq!(c.chunk_cache_size.as_deref(), Some("8G"));
        assert_eq!(c.remote_api.unwrap().listen.port(), 8443);
        assert_eq!(c.accounts[0].name, "prod");
        let typo = Config::parse("portl = \"0.0.0.0:3260\"").unwrap_err();
        assert!(format!("{typo:#}").contains("portl"), "{typo:#}");
        let size = Config::parse("chunk_cache_size = \"4X\"").unwrap_err();
        assert!(format!("{size:#}").contains("chunk_cache_size"), "{size:#}");
        assert!(Config::load(Path::new("/nonexistent/livemount.toml")).is_err());
    }
}
