//! A TCP relay on 127.0.0.1 between a client and an S3 store, that makes the way between them fail as a test
//! asks:
//!
//! - **cuts**: a connection that has carried a given number of bytes toward the store (or back) is cut there
//!   (a TCP reset, or an orderly close, to both sides). For a large upload (or download) that is the middle
//!   of its body, which is where a network that drops hurts most.
//! - **wrong region**: requests signed for another region than their bucket's are answered as S3 answers
//!   them. moto serves a bucket to a request signed for any region (it does not model regions for object
//!   requests), so without this a test could never see what a user of a bucket in another region sees.
//!
//! Plain threads and `std::net`: one thread accepts, and each connection has one thread each way.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// A TCP reset to both sides (`SO_LINGER` 0): what a crashed middlebox or a dropped NAT entry gives.
    Reset,
    /// An orderly close (FIN) to both sides mid-request: what a proxy that gives up on a connection does.
    Close,
}

/// How S3 answers a request signed for another region than its bucket's (moto answers such requests as if
/// the region were right). Both answers as the S3 API Reference lists them under "Error responses"
/// (docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html): `PermanentRedirect` (301) and
/// `AuthorizationHeaderMalformed` (400), with the bucket's region in `x-amz-bucket-region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrongRegion {
    /// `301 PermanentRedirect`, the bucket's region in the `x-amz-bucket-region` header and its endpoint in
    /// the error document: a request sent to an endpoint of another region.
    Redirect,
    /// `400 AuthorizationHeaderMalformed`, the bucket's region only in the error document's `Region`
    /// element: a request that reached the bucket's region but was signed for another.
    Malformed,
}

/// A connection is cut `how` once it has carried `after` bytes one way, `left` more times (`None`: every
/// time).
#[derive(Clone, Copy)]
struct Rule {
    after: u64,
    left: Option<u64>,
    how: Cut,
}

/// Which way bytes go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    ToStore,
    ToClient,
}

/// A relay listening on a free port of 127.0.0.1; stopped, and its connections ended, when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Faults>,
    cuts: AtomicU64,
    wrong_region_answers: AtomicU64,
    stop: AtomicBool,
    /// The client side of every connection still open (by number), so that dropping the relay ends them.
    open: Mutex<HashMap<u64, TcpStream>>,
}

#[derive(Default)]
struct Faults {
    /// Cuts of what goes toward the store (requests), and of what comes back (answers).
    requests: Option<Rule>,
    answers: Option<Rule>,
    /// Bucket -> the region it is in, for the buckets whose requests are checked.
    regions: HashMap<String, String>,
    wrong_region: Option<WrongRegion>,
}

impl Relay {
    /// A relay to `upstream` (`http://127.0.0.1:PORT`, as an endpoint URL is written), passing everything
    /// until told otherwise.
    pub fn start(upstream: &str) -> Relay {
        let hostport = upstream.strip_prefix("http://").unwrap_or(upstream).trim_end_matches('/');
        let upstream: SocketAddr = hostport.parse().unwrap_or_else(|e| panic!("{upstream}: not 127.0.0.1:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            faults: Mutex::new(Faults::default()),
            cuts: AtomicU64::new(0),
            wrong_region_answers: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        // Numbers the connections, for `open`.
        let next = AtomicU64::new(0);
        let acceptor = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if s.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let s = s.clone();
                    let _ = std::thread::Builder::new().name("relay-conn".into()).spawn(move || serve(n, client, &s));
                }
            })
            .unwrap();
        Relay { addr, shared, acceptor: Some(acceptor) }
    }

    /// The endpoint URL that aims a client at the store through the relay.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, connections are cut `how` once they have carried `bytes` toward the store (requests),
    /// `times` more times (`None`: every connection that gets that far).
    pub fn cut_requests_after(&self, bytes: u64, times: Option<u64>, how: Cut) {
        self.shared.faults.lock().unwrap().requests = Some(Rule { after: bytes, left: times, how });
    }

    /// From now on, connections are cut `how` once they have carried `bytes` toward the client (answers: the
    /// middle of a large GET's body), `times` more times (`None`: every connection that gets that far).
    pub fn cut_answers_after(&self, bytes: u64, times: Option<u64>, how: Cut) {
        self.shared.faults.lock().unwrap().answers = Some(Rule { after: bytes, left: times, how });
    }

    /// No more cuts (connections already cut stay so).
    pub fn heal(&self) {
        let mut f = self.shared.faults.lock().unwrap();
        f.requests = None;
        f.answers = None;
    }

    /// Requests for `bucket` signed for another region than `region` are answered as `answer` says; the others
    /// pass. The first request of each connection is looked at (a client signs all its requests for one
    /// region, so the rest of a connection is that client's too).
    pub fn bucket_region(&self, bucket: &str, region: &str, answer: WrongRegion) {
        let mut f = self.shared.faults.lock().unwrap();
        f.regions.insert(bucket.to_string(), region.to_string());
        f.wrong_region = Some(answer);
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Acquire)
    }

    /// How many requests were answered as signed for the wrong region.
    pub fn wrong_region_answers(&self) -> u64 {
        self.shared.wrong_region_answers.load(Ordering::Acquire)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // The acceptor waits in accept(): one more connection wakes it to see `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for (_, c) in self.shared.open.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// One client connection: its own connection to the store, and the bytes copied both ways.
fn serve(n: u64, client: TcpStream, shared: &Shared) {
    let Ok(upstream) = TcpStream::connect(shared.upstream) else { return };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let checking = !shared.faults.lock().unwrap().regions.is_empty();
    let mut first = Vec::new();
    if checking {
        match check_region(&client, shared) {
            Some(Checked::Pass(read)) => first = read,
            Some(Checked::Answered) | None => return,
        }
    }
    let (Ok(registered), Ok(client_back), Ok(upstream_back)) =
        (client.try_clone(), client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    shared.open.lock().unwrap().insert(n, registered);
    // Set before the sockets are shut down on a cut, so that the other way's thread, woken by it, does not
    // close its side in good order first (a reset is to be the only thing either side sees).
    let cut = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let cut_back = cut.clone();
        scope.spawn(move || pump(Way::ToClient, &upstream_back, &client_back, Vec::new(), shared, &cut_back));
        pump(Way::ToStore, &client, &upstream, first, shared, &cut);
    });
    shared.open.lock().unwrap().remove(&n);
}

/// Copies one way, `first` (already read) first, until either side ends, and cuts the connection where the
/// faults say.
fn pump(way: Way, mut from: &TcpStream, mut to: &TcpStream, first: Vec<u8>, shared: &Shared, cut: &AtomicBool) {
    let (client, upstream) = match way {
        Way::ToStore => (from, to),
        Way::ToClient => (to, from),
    };
    let mut carried = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut pending = first;
    loop {
        if pending.is_empty() {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // This way is done: the other side sees the end, the other way goes on. (Unless this end
                    // is a cut's doing: then nothing more is sent.)
                    if !cut.load(Ordering::Acquire) {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(k) => pending.extend_from_slice(&buf[..k]),
            }
        }
        let cut_at = {
            let mut f = shared.faults.lock().unwrap();
            let rule = match way {
                Way::ToStore => f.requests.as_mut(),
                Way::ToClient => f.answers.as_mut(),
            };
            match rule {
                Some(r) if carried + pending.len() as u64 > r.after && r.left != Some(0) => {
                    if let Some(left) = r.left.as_mut() {
                        *left -= 1;
                    }
                    Some((r.after.saturating_sub(carried) as usize, r.how))
                }
                _ => None,
            }
        };
        if let Some((keep, how)) = cut_at {
            let _ = to.write_all(&pending[..keep]);
            shared.cuts.fetch_add(1, Ordering::AcqRel);
            cut.store(true, Ordering::Release);
            end(client, upstream, how);
            return;
        }
        if to.write_all(&pending).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        carried += pending.len() as u64;
        pending.clear();
    }
}

/// Ends both sides of a connection as `how` says. The sockets close when both threads of the connection have
/// let go of them.
fn end(client: &TcpStream, upstream: &TcpStream, how: Cut) {
    match how {
        Cut::Reset => {
            for s in [client, upstream] {
                set_linger_zero(s);
                // Wakes the other thread's read without sending anything: the close that follows, with
                // SO_LINGER 0, sends the reset.
                let _ = s.shutdown(Shutdown::Read);
            }
        }
        Cut::Close => {
            for s in [client, upstream] {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a pointer to a live `linger` of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

enum Checked {
    /// Signed for the bucket's region (or a bucket not checked): what was read, to be sent on.
    Pass(Vec<u8>),
    /// Answered as S3 answers a request signed for the wrong region.
    Answered,
}

/// Reads the head of the connection's first request and answers it if it is signed for another region than
/// its bucket's. `None` when the client went away first.
fn check_region(client: &TcpStream, shared: &Shared) -> Option<Checked> {
    let mut read = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let head_len = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if read.len() > 256 << 10 {
            return Some(Checked::Pass(read));
        }
        match (&*client).read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(k) => read.extend_from_slice(&buf[..k]),
        }
    };
    let head = String::from_utf8_lossy(&read[..head_len]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (request.next().unwrap_or_default(), request.next().unwrap_or_default());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Path style (the tests aim the SDK at an endpoint, which it then addresses in path style):
    // /BUCKET/KEY?QUERY.
    let bucket = path.trim_start_matches('/').split(['/', '?']).next().unwrap_or_default().to_string();
    // SigV4: "Credential=KEY/DATE/REGION/SERVICE/aws4_request".
    let signed = headers.get("authorization").and_then(|a| {
        let scope = a.split("Credential=").nth(1)?.split([',', ' ']).next()?;
        scope.split('/').nth(2).map(str::to_string)
    });
    let (expected, answer) = {
        let f = shared.faults.lock().unwrap();
        (f.regions.get(&bucket).cloned(), f.wrong_region.unwrap_or(WrongRegion::Redirect))
    };
    let (Some(expected), Some(signed)) = (expected, signed) else { return Some(Checked::Pass(read)) };
    if expected == signed {
        return Some(Checked::Pass(read));
    }
    // The body is read and dropped before answering: a socket closed with unread data sends a reset, and the
    // client might then never see the answer. A client that waits for "100 Continue" sends none.
    let expects_continue = headers.get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let length: u64 = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if !expects_continue {
        let mut left = length.saturating_sub((read.len() - head_len) as u64);
        let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            match (&*client).read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(k) => left -= k as u64,
            }
        }
    }
    let request_id = format!("{:016X}", shared.wrong_region_answers.fetch_add(1, Ordering::AcqRel) + 0x5EED);
    let (status, extra_header, document) = match answer {
        WrongRegion::Redirect => (
            "301 Moved Permanently",
            format!("x-amz-bucket-region: {expected}\r\n"),
            format!(
                "<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be \
                 addressed using the specified endpoint. Please send all future requests to this endpoint.\
                 </Message><Endpoint>{bucket}.s3.{expected}.amazonaws.com</Endpoint><Bucket>{bucket}</Bucket>\
                 <RequestId>{request_id}</RequestId><HostId>relay</HostId></Error>"
            ),
        ),
        WrongRegion::Malformed => (
            "400 Bad Request",
            String::new(),
            format!(
                "<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; \
                 the region '{signed}' is wrong; expecting '{expected}'</Message><Region>{expected}</Region>\
                 <RequestId>{request_id}</RequestId><HostId>relay</HostId></Error>"
            ),
        ),
    };
    // An answer to HEAD has no body, as S3 sends it.
    let body = if method == "HEAD" {
        String::new()
    } else {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{document}")
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\n{extra_header}x-amz-request-id: {request_id}\r\nContent-Type: application/xml\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if method == "HEAD" { 0 } else { body.len() }
    );
    let _ = (&*client).write_all(answer.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
    Some(Checked::Answered)
}
