//! The CLI's client of the daemon's control API (HTTP/1.1 with JSON over a Unix socket or loopback TCP).

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

impl std::str::FromStr for ApiAddr {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
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
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(addr: ApiAddr) -> anyhow::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Client { addr, rt })
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
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "livemount")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
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
