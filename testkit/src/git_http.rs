//! Git repositories served over smart HTTP with token authentication, as
//! a Bitbucket serves them: `git http-backend` (git's own CGI program)
//! behind a small HTTP/1.1 server on loopback. Cloning from it is real
//! HTTP; a request without an accepted token gets 401 and a Basic
//! challenge, so git asks its credential helper, as with a real server.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

/// Serves every repository under a root directory at
/// `http://ADDRESS/scm/<path under the root>`, and with an upstream, passes
/// every other request to it, so that one origin serves a REST API and
/// git, as a Bitbucket does. Lives as long as the test process.
pub struct GitHttpServer {
    address: SocketAddr,
    tokens: Arc<Mutex<HashSet<String>>>,
    requests: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    anonymous: Arc<std::sync::atomic::AtomicBool>,
}

impl GitHttpServer {
    /// Serves `root`; `token` is accepted (as a Basic password with any
    /// user name, or as a Bearer token).
    pub fn start(root: &Path, token: &str) -> GitHttpServer {
        GitHttpServer::start_in_front_of(root, token, None)
    }

    /// [`GitHttpServer::start`], passing what is not under `/scm` to
    /// `upstream` (which checks its own credentials).
    pub fn start_in_front_of(
        root: &Path,
        token: &str,
        upstream: Option<SocketAddr>,
    ) -> GitHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let server = GitHttpServer {
            address,
            tokens: Arc::new(Mutex::new(HashSet::from([token.to_string()]))),
            requests: Arc::default(),
            refused: Arc::default(),
            anonymous: Arc::default(),
        };
        let (root, tokens, requests, refused, anonymous) = (
            root.to_path_buf(),
            Arc::clone(&server.tokens),
            Arc::clone(&server.requests),
            Arc::clone(&server.refused),
            Arc::clone(&server.anonymous),
        );
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let (root, tokens, requests, refused) = (
                    root.clone(),
                    Arc::clone(&tokens),
                    Arc::clone(&requests),
                    Arc::clone(&refused),
                );
                let open = anonymous.load(Ordering::SeqCst);
                std::thread::spawn(move || {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let tokens = if open { None } else { Some(&*tokens) };
                    if let Err(error) = serve(socket, &root, tokens, &refused, upstream) {
                        eprintln!("git http server: {error}");
                    }
                });
            }
        });
        server
    }

    /// `host:port`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The clone URL of the repository at `path` under the root.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/scm/{path}", self.address)
    }

    /// Stops accepting `token` (a revoked token).
    pub fn revoke(&self, token: &str) {
        self.tokens.lock().unwrap().remove(token);
    }

    /// Accepts `token` too.
    pub fn accept(&self, token: &str) {
        self.tokens.lock().unwrap().insert(token.to_string());
    }

    /// Serves `root` to anyone, without a token (a public server).
    pub fn start_anonymous(root: &Path) -> GitHttpServer {
        let server = GitHttpServer::start(root, "");
        server.anonymous.store(true, Ordering::SeqCst);
        server
    }

    /// HTTP requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 401 so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

struct Request {
    method: String,
    target: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn serve(
    socket: TcpStream,
    root: &Path,
    tokens: Option<&Mutex<HashSet<String>>>,
    refused: &AtomicUsize,
    upstream: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket.try_clone()?);
    let mut socket = socket;
    let request = read_request(&mut reader)?;
    if let Some(upstream) = upstream.filter(|_| !request.path.starts_with("/scm/")) {
        return pass_on(&request, upstream, socket);
    }
    let authorised = tokens.is_none_or(|tokens| {
        request
            .header("Authorization")
            .and_then(token_of)
            .is_some_and(|token| tokens.lock().unwrap().contains(&token))
    });
    if !authorised {
        refused.fetch_add(1, Ordering::SeqCst);
        return socket.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let Some(path_info) = request.path.strip_prefix("/scm") else {
        return socket.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &request.method)
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", &request.query)
        .env("REMOTE_USER", "git")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", request.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(kind) = request.header("Content-Type") {
        command.env("CONTENT_TYPE", kind);
    }
    if let Some(encoding) = request.header("Content-Encoding") {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(protocol) = request.header("Git-Protocol") {
        command.env("GIT_PROTOCOL", protocol);
    }
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let body = request.body;
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut output = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut output)?;
    let _ = writer.join();
    child.wait()?;
    // CGI answer: headers, a blank line, the body.
    let split = find(&output, b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| find(&output, b"\n\n").map(|at| (at, 2)));
    let (head, body) = match split {
        Some((at, skip)) => (
            String::from_utf8_lossy(&output[..at]).into_owned(),
            &output[at + skip..],
        ),
        None => (String::new(), &output[..]),
    };
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    let mut headers = String::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("Status") {
            status = value.trim().to_string();
        } else {
            headers.push_str(&format!("{name}:{value}\r\n"));
        }
    }
    response.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    response.extend_from_slice(body);
    socket.write_all(&response)
}

/// Sends `request` to `upstream` and its answer back, one request per
/// connection.
fn pass_on(request: &Request, upstream: SocketAddr, mut socket: TcpStream) -> std::io::Result<()> {
    let mut out = match TcpStream::connect(upstream) {
        Ok(out) => out,
        Err(_) => {
            return socket.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        }
    };
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !["connection", "content-length", "transfer-encoding"]
            .contains(&name.to_ascii_lowercase().as_str())
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        request.body.len()
    ));
    out.write_all(head.as_bytes())?;
    out.write_all(&request.body)?;
    std::io::copy(&mut out, &mut socket)?;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Request> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut request = Request {
        method,
        target: target.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    if let Some(length) = request
        .header("Content-Length")
        .and_then(|value| value.parse::<usize>().ok())
    {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        request.body = body;
    } else if request
        .header("Transfer-Encoding")
        .is_some_and(|value| value.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            request.body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(request)
}

/// The token of a `Basic user:token` or `Bearer token` header.
fn token_of(header: &str) -> Option<String> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("Bearer") {
        return Some(value.trim().to_string());
    }
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, token) = text.split_once(':')?;
    Some(token.to_string())
}

/// A bare copy of `repository` at `root/<path>` (what the server serves).
pub fn publish_bare(repository: &Path, root: &Path, path: &str) -> PathBuf {
    let target = root.join(path);
    std::fs::create_dir_all(target.parent().expect("a parent")).expect("create parent");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--bare", "--"])
        .arg(repository)
        .arg(&target)
        .status()
        .expect("run git clone");
    assert!(
        status.success(),
        "git clone --bare {}",
        repository.display()
    );
    target
}
