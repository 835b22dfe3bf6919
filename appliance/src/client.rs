//! The CLI's client of the daemon's control API: HTTP/1.1 with JSON over the local Unix socket, loopback TCP,
//! or an appliance's remote API (TLS, with a bearer token).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api_types::ErrorBody;

/// Where the daemon's API listens.
#[derive(Clone, Debug)]
pub enum ApiAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
    /// `https://HOST[:PORT]`: the remote API (port 8443 unless given).
    Https {
        host: String,
        port: u16,
    },
}

impl std::str::FromStr for ApiAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("https://") {
            let rest = rest.trim_end_matches('/');
            // A bracketed IPv6 address keeps its colons: [::1]:8443.
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) if !p.contains(']') => {
                    (h, p.parse().map_err(|_| format!("{s:?}: the port {p:?} is not a number"))?)
                }
                _ => (rest, 8443),
            };
            if host.is_empty() {
                return Err(format!("{s:?} names no host"));
            }
            return Ok(ApiAddr::Https { host: host.trim_matches(['[', ']']).to_string(), port });
        }
        Ok(match s.parse::<SocketAddr>() {
            Ok(a) => ApiAddr::Tcp(a),
            Err(_) => ApiAddr::Unix(PathBuf::from(s)),
        })
    }
}

impl std::fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddr::Unix(p) => write!(f, "{}", p.display()),
            ApiAddr::Tcp(a) => write!(f, "{a}"),
            ApiAddr::Https { host, port } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// An error answer of the daemon: its HTTP status, and the message the CLI prints.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    pub status: u16,
    pub message: String,
}

pub struct Client {
    addr: ApiAddr,
    token: Option<String>,
    /// For the remote API.
    tls: Option<tokio_rustls::TlsConnector>,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the daemon the command line names (`--api`, `--token`, `--ca-cert`).
    pub fn new(cli: &crate::cli::Cli) -> anyhow::Result<Client> {
        Client::to(cli.api.clone(), cli.token.clone(), cli.ca_cert.as_deref())
    }

    /// A client of the API at `addr`, presenting `token`, trusting `ca_cert` for TLS.
    pub fn to(addr: ApiAddr, token: Option<String>, ca_cert: Option<&Path>) -> anyhow::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let tls = match &addr {
            ApiAddr::Https { .. } => Some(tls_connector(ca_cert)?),
            _ => None,
        };
        Ok(Client { addr, token, tls, rt })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.call("POST", path, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("DELETE", path, None::<&()>)
    }

    fn call<B: Serialize, T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&B>) -> anyhow::Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request serializes")).unwrap_or_default();
        let host = match &self.addr {
            ApiAddr::Https { host, .. } => host.as_str(),
            _ => "livemount",
        };
        let mut req =
            Request::builder().method(method).uri(path).header("host", host).header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let (status, bytes) = self.rt.block_on(async {
            let not_running = || format!("cannot reach the livemount daemon at {}: is `livemount serve` running? (--api or LIVEMOUNT_API give its address)", self.addr);
            let resp = match &self.addr {
                ApiAddr::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await.with_context(not_running)?;
                    send(s, req).await?
                }
                ApiAddr::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a).await.with_context(not_running)?;
                    send(s, req).await?
                }
                ApiAddr::Https { host, port } => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.with_context(not_running)?;
                    let name = rustls_pki_types::ServerName::try_from(host.clone())
                        .with_context(|| format!("{host:?} is not a host name or address"))?;
                    let tls = self.tls.as_ref().expect("made for https").connect(name, s).await.with_context(|| {
                        format!("TLS with {}: is the appliance's certificate trusted (--ca-cert FILE)?", self.addr)
                    })?;
                    send(tls, req).await?
                }
            };
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(DaemonError { status: status.as_u16(), message }.into());
        }
        serde_json::from_slice(&bytes).context("unexpected answer from the daemon")
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// TLS for the remote API: trusting the certificates in `ca_cert` (an appliance's self-signed one), or the
/// system's authorities.
fn tls_connector(ca_cert: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading the certificate {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("reading the certificate {}", path.display()))?)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
