//! Test fixtures: git repositories built with the real `git` command in a
//! temporary directory, with fixed authors and increasing commit dates so
//! that every run builds the same history.
//!
//! ```
//! let repo = leakscan_testkit::GitRepo::new();
//! repo.write("a.txt", "hello\n");
//! let commit = repo.commit_all("first");
//! assert_eq!(commit.len(), 40);
//! ```

pub mod git_http;

use std::{
    cell::Cell,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// A non-bare repository on branch `main` in a temporary directory.
pub struct GitRepo {
    dir: tempfile::TempDir,
    clock: Cell<i64>,
}

impl Default for GitRepo {
    fn default() -> Self {
        Self::new()
    }
}

impl GitRepo {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("leakscan-test-")
            .tempdir()
            .expect("create temp dir");
        let repo = GitRepo {
            dir,
            clock: Cell::new(1_700_000_000),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository; panics with git's output when it fails.
    pub fn git(&self, args: &[&str]) -> String {
        let date = format!("{} +0000", self.clock.get());
        let output = Command::new("git")
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_AUTHOR_NAME", "Alice Example")
            .env("GIT_AUTHOR_EMAIL", "alice@example.com")
            .env("GIT_COMMITTER_NAME", "Alice Example")
            .env("GIT_COMMITTER_EMAIL", "alice@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("run git");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).expect("create dirs");
        }
        fs::write(full, content).expect("write file");
    }

    pub fn remove(&self, path: &str) {
        fs::remove_file(self.dir.path().join(path)).expect("remove file");
    }

    /// Stages everything and commits; returns the new commit's id.
    pub fn commit_all(&self, message: &str) -> String {
        self.clock.set(self.clock.get() + 60);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn checkout_new(&self, branch: &str) {
        self.git(&["checkout", "-q", "-b", branch]);
    }

    pub fn checkout(&self, branch: &str) {
        self.git(&["checkout", "-q", branch]);
    }

    /// Merges `branch` into the current branch with a merge commit.
    pub fn merge(&self, branch: &str) -> String {
        self.clock.set(self.clock.get() + 60);
        self.git(&["merge", "-q", "--no-ff", "--no-edit", branch]);
        self.head()
    }

    /// The commit time the next commit will get.
    pub fn next_time(&self) -> i64 {
        self.clock.get() + 60
    }

    pub fn into_temp_dir(self) -> tempfile::TempDir {
        self.dir
    }

    pub fn path_buf(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// A TCP server on loopback that accepts connections and never answers: a
/// remote that stalls. It lives as long as the test process.
pub fn silent_server() -> std::net::SocketAddr {
    silent_server_counting().0
}

/// [`silent_server`], and how many connections it has taken so far (a
/// client that reached it is now stuck there).
pub fn silent_server_counting() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut held = Vec::new();
    loopback_server(move |socket| held.push(socket))
}

/// A TCP server on loopback that takes each connection and closes it at
/// once, as a coordinator replica handing over lets go of its connections:
/// a gRPC call on it ends CANCELLED, "connection closed". Also how many
/// connections it has taken so far.
pub fn closing_server_counting() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    loopback_server(|socket| {
        drop(socket);
    })
}

/// Accepts connections on a loopback port in a thread of its own, living as
/// long as the test process, handing each to `serve` and counting them.
fn loopback_server(
    mut serve: impl FnMut(std::net::TcpStream) + Send + 'static,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            serve(socket);
        }
    });
    (address, accepted)
}

/// A Redis server of the test's own (a temporary directory, a free port on
/// loopback, no persistence), for tests that flush, kill or restart Redis:
/// the machine's shared instance is never touched. Stopped (by its pid)
/// when dropped.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` and waits until it answers PING.
    pub fn start() -> PrivateRedis {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            listener.local_addr().expect("local address").port()
        };
        let mut redis = PrivateRedis {
            dir: tempfile::tempdir().expect("temp dir"),
            port,
            child: None,
        };
        redis.spawn();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: whatever it held is gone, as after a
    /// crash without persistence) and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command with redis-cli (`FLUSHALL`, ...) and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (deploy/local/services.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.answers_ping() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private redis-server on port {} did not answer",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        socket.write_all(b"PING\r\n").is_ok()
            && socket.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server of the test's own (`initdb` in a temporary
/// directory, a free port on loopback, trust authentication), for tests
/// that crash or restart PostgreSQL: the machine's shared server is never
/// touched. As root (PostgreSQL refuses to run as root) the server runs as
/// the `postgres` user through `runuser`. Stopped when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Makes a cluster and starts it, waiting until it accepts connections.
    pub fn start() -> PrivatePostgres {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            listener.local_addr().expect("local address").port()
        };
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
            .unwrap_or(false);
        let server = PrivatePostgres {
            dir: tempfile::tempdir().expect("temp dir"),
            port,
            bin: postgres_bin_dir(),
            as_postgres,
        };
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of the server's directory failed");
        }
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.pg_ctl_start();
        server
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no
    /// checkpoint, clients cut off) and starts it again, which replays the
    /// write-ahead log: what was committed is there, connections are not.
    pub fn crash_and_restart(&self) {
        self.pg_ctl_stop();
        self.pg_ctl_start();
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn pg_ctl_stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// `program` of the server's binaries, run as the `postgres` user when
    /// this process is root, in the server's directory.
    fn command(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            std::process::Command::new(&program)
        };
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("{program} runs: {error}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .args(["-D", data.as_str(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The newest PostgreSQL server binaries Debian installed
/// (`/usr/lib/postgresql/<version>/bin`), else those on the PATH.
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| PathBuf::from(""))
}

/// A message an [`SmtpServer`] accepted: it answered `250` to the end of
/// its data while the client was still there.
#[derive(Debug, Clone)]
pub struct SmtpMessage {
    pub from: String,
    pub recipients: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed).
    pub data: String,
}

/// A small SMTP server on loopback (EHLO/HELO, MAIL, RCPT, DATA, RSET,
/// NOOP, QUIT; no TLS, no authentication), recording what it accepts, as
/// a real server would: a message counts once the server answered `250`
/// to its final dot. With [`SmtpServer::hold_first`], it waits before
/// answering the first message, and drops it if the client goes away
/// meanwhile (a sender killed mid-send). It lives as long as the test.
pub struct SmtpServer {
    address: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<SmtpMessage>>>,
    holding: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        SmtpServer::with_hold(None)
    }

    /// Holds the first message's `250` up to `hold`.
    pub fn hold_first(hold: std::time::Duration) -> SmtpServer {
        SmtpServer::with_hold(Some(hold))
    }

    fn with_hold(hold: Option<std::time::Duration>) -> SmtpServer {
        use std::sync::{atomic::AtomicBool, Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let holding = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(Mutex::new(hold));
        {
            let (accepted, holding) = (Arc::clone(&accepted), Arc::clone(&holding));
            std::thread::spawn(move || {
                for socket in listener.incoming().flatten() {
                    let (accepted, holding, hold) = (
                        Arc::clone(&accepted),
                        Arc::clone(&holding),
                        Arc::clone(&hold),
                    );
                    std::thread::spawn(move || {
                        let _ = smtp_session(socket, &accepted, &holding, &hold);
                    });
                }
            });
        }
        SmtpServer {
            address,
            accepted,
            holding,
        }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.address)
    }

    pub fn accepted(&self) -> Vec<SmtpMessage> {
        self.accepted.lock().expect("not poisoned").clone()
    }

    /// Whether the first message is being held right now.
    pub fn is_holding(&self) -> bool {
        self.holding.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn smtp_session(
    socket: std::net::TcpStream,
    accepted: &std::sync::Mutex<Vec<SmtpMessage>>,
    holding: &std::sync::atomic::AtomicBool,
    hold: &std::sync::Mutex<Option<std::time::Duration>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut writer = socket.try_clone()?;
    let mut reader = BufReader::new(socket);
    writer.write_all(b"220 leakscan-test ESMTP\r\n")?;
    let (mut from, mut recipients) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let argument = |prefix: &str| {
            command
                .get(prefix.len()..)
                .unwrap_or("")
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        };
        match verb.as_str() {
            "EHLO" => writer.write_all(b"250-leakscan-test\r\n250 8BITMIME\r\n")?,
            "HELO" | "NOOP" => writer.write_all(b"250 OK\r\n")?,
            "MAIL" => {
                from = argument("MAIL FROM:");
                recipients.clear();
                writer.write_all(b"250 OK\r\n")?;
            }
            "RCPT" => {
                recipients.push(argument("RCPT TO:"));
                writer.write_all(b"250 OK\r\n")?;
            }
            "RSET" => {
                recipients.clear();
                writer.write_all(b"250 OK\r\n")?;
            }
            "DATA" => {
                writer.write_all(b"354 end with <CRLF>.<CRLF>\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if let Some(hold) = hold.lock().expect("not poisoned").take() {
                    // The first message: wait, and drop it if the client
                    // leaves meanwhile.
                    holding.store(true, std::sync::atomic::Ordering::SeqCst);
                    let deadline = std::time::Instant::now() + hold;
                    reader
                        .get_ref()
                        .set_read_timeout(Some(std::time::Duration::from_millis(50)))?;
                    let mut gone = false;
                    while std::time::Instant::now() < deadline {
                        let mut byte = [0u8; 1];
                        match reader.get_mut().read(&mut byte) {
                            Ok(0) => {
                                gone = true;
                                break;
                            }
                            Ok(_) => {}
                            Err(error)
                                if matches!(
                                    error.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                    holding.store(false, std::sync::atomic::Ordering::SeqCst);
                    if gone {
                        return Ok(());
                    }
                    reader.get_ref().set_read_timeout(None)?;
                }
                writer.write_all(b"250 OK queued\r\n")?;
                accepted.lock().expect("not poisoned").push(SmtpMessage {
                    from: from.clone(),
                    recipients: recipients.clone(),
                    data,
                });
            }
            "QUIT" => {
                writer.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => writer.write_all(b"502 not implemented\r\n")?,
        }
    }
}
