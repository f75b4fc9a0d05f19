//! Helpers for the end-to-end tests: the real binaries as child processes
//! (their logs kept in files), a small REST client, generated repositories
//! and `leakscan scan` as the reference.
//!
//! The binaries are found next to the test executable's directory
//! (`target/release/`), or in `LEAKSCAN_BIN_DIR`; `scripts/test.sh` builds
//! them before the tests run.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::Value;

/// Where the leakscan binaries are.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LEAKSCAN_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/release/deps/cluster-HASH → target/release
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable sits in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --release --bins)",
        path.display()
    );
    path
}

/// A child process of one of our binaries, killed when dropped.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args` and `env`, its stderr to `log`, and waits
    /// (up to 60 s) for a stdout line containing `ready_marker`; returns the
    /// process and that line.
    pub fn start(
        name: &str,
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
        ready_marker: &str,
    ) -> (Process, String) {
        let (process, mut lines) = Process::start_lines(name, binary, args, env, log, ready_marker);
        let line = lines.pop().expect("the ready line");
        (process, line)
    }

    /// As [`Process::start`], returning every stdout line up to and with
    /// the ready line.
    pub fn start_lines(
        name: &str,
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
        ready_marker: &str,
    ) -> (Process, Vec<String>) {
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(bin(binary))
            .args(args)
            .envs(env.iter().copied())
            .env("LEAKSCAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let process = Process {
            name: name.to_string(),
            child,
            log,
        };
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) if line.contains(ready_marker) => {
                    seen.push(line);
                    return (process, seen);
                }
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "{name} did not print {ready_marker:?}; its log:\n{}",
                    process.log_text()
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to hand anything back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (what Kubernetes sends first), without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// The exit status, once the process ended within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last whitespace-separated word of a line, without a URL scheme:
/// the address in "… listening on http://127.0.0.1:PORT".
pub fn address_in(line: &str) -> String {
    let word = line.split_whitespace().last().unwrap_or_default();
    word.trim_start_matches("http://").to_string()
}

/// A REST client authenticated as one user.
pub struct Api {
    pub base: String,
    authorization: String,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(address: &str, user: &str, password: &str) -> Api {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Api {
            base: format!("http://{address}"),
            authorization: format!("Basic {credentials}"),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    /// (status, JSON body or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.authorization);
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{method} {path}: {error}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The JSON of a call that must answer `expected`.
    pub fn expect(&self, method: &str, path: &str, body: Option<Value>, expected: u16) -> Value {
        let (status, json) = self.call(method, path, body);
        assert_eq!(
            status, expected,
            "{method} {path} answered {status}: {json}"
        );
        json
    }
}

/// Polls `check` every 50 ms until it gives a value or `timeout` passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a repository with `bench/gen_repo.py` (planted fake secrets on
/// several branches).
pub fn generate_repository(
    out: &Path,
    commits: u32,
    target_bytes: &str,
    branches: u32,
    secrets: u32,
    seed: u32,
) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/gen_repo.py");
    let status = Command::new("python3")
        .arg(script)
        .args(["--out", out.to_str().expect("UTF-8 path")])
        .args(["--commits", &commits.to_string()])
        .args(["--target-bytes", target_bytes])
        .args(["--branches", &branches.to_string()])
        .args(["--secrets", &secrets.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--repack", "none", "--quiet", "--force"])
        .stdout(Stdio::null())
        .status()
        .expect("python3 runs bench/gen_repo.py");
    assert!(status.success(), "gen_repo.py failed for {}", out.display());
}

/// The branches of a repository.
pub fn branches(repository: &Path) -> Vec<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["for-each-ref", "refs/heads", "--format=%(refname:short)"])
        .output()
        .expect("git runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A finding reduced to what both sides report alike.
pub type FindingKey = (String, String, String, Option<i64>);

fn key_of(finding: &Value) -> FindingKey {
    (
        finding["rule"].as_str().unwrap_or_default().to_string(),
        finding["commit"].as_str().unwrap_or_default().to_string(),
        finding["path"].as_str().unwrap_or_default().to_string(),
        finding["line"].as_i64(),
    )
}

pub fn keys(findings: &[Value]) -> BTreeSet<FindingKey> {
    findings.iter().map(key_of).collect()
}

/// What `leakscan scan --branch` reports for one branch.
pub fn leakscan_scan(repository: &Path, branch: &str) -> BTreeSet<FindingKey> {
    let output = Command::new(bin("leakscan"))
        .arg("scan")
        .arg(repository)
        // The keyword prefilter starts in milliseconds (Vectorscan compiles for
        // a second and a half) and finds the same (engine/tests/builtin_rules.rs).
        .args([
            "--branch",
            branch,
            "--format",
            "json",
            "--prefilter",
            "keywords",
        ])
        .output()
        .expect("leakscan runs");
    assert!(
        output.status.code() == Some(0) || output.status.code() == Some(1),
        "leakscan scan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    keys(report.as_array().expect("a JSON array of findings"))
}

/// Runs git in `dir` as a fixed author and committer; panics with git's
/// message if it fails. Returns what git printed, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev Example")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev Example")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// GETs `url` without credentials: status and body.
pub fn get_plain(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(30)).call() {
        Ok(answer) => (answer.status(), answer.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, answer)) => (code, answer.into_string().unwrap_or_default()),
        Err(error) => panic!("GET {url}: {error}"),
    }
}

/// GETs `url` without credentials and reads the JSON it answers.
pub fn get_json(url: &str) -> Value {
    let (status, body) = get_plain(url);
    serde_json::from_str(&body)
        .unwrap_or_else(|error| panic!("GET {url} ({status}): {error}: {body}"))
}

/// Prometheus text as `name{labels}` → value (comments skipped).
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The environment the binaries of one test cluster share: its database,
/// its Redis (URL with a key prefix of its own), a fresh master key and
/// worker token, and the bootstrap administrator.
pub struct ClusterEnv {
    pub worker_token: String,
    vars: Vec<(&'static str, String)>,
}

impl ClusterEnv {
    pub fn new(database_url: &str, redis_url: &str, (user, password): (&str, &str)) -> ClusterEnv {
        let worker_token = leakscan_proto::auth::generate_token();
        let master_key = leakscan_store::secrets::MasterKey::generate().to_hex();
        ClusterEnv {
            vars: vec![
                ("LEAKSCAN_WORKER_TOKEN", worker_token.clone()),
                ("LEAKSCAN_DATABASE_URL", database_url.into()),
                ("LEAKSCAN_REDIS_URL", redis_url.into()),
                ("LEAKSCAN_MASTER_KEY", master_key),
                ("LEAKSCAN_ADMIN_USER", user.into()),
                ("LEAKSCAN_ADMIN_PASSWORD", password.into()),
            ],
            worker_token,
        }
    }

    /// The variables, as [`Process::start`] takes them.
    pub fn vars(&self) -> Vec<(&str, &str)> {
        self.vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// A gateway process on `listen` serving the repositories under `root`
/// (more arguments in `extra`), its stderr to `log`; and its address.
pub fn start_gateway(
    env: &[(&str, &str)],
    root: &Path,
    listen: &str,
    extra: &[&str],
    log: PathBuf,
) -> (Process, String) {
    let mut args = vec!["--listen", listen, "--repos-root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (gateway, line) = Process::start(
        "gateway",
        "leakscan-gateway",
        &args,
        env,
        log,
        "listening on",
    );
    (gateway, address_in(&line))
}

/// A coordinator process on a free loopback port, its stderr to `log`;
/// and its URL.
pub fn start_coordinator(env: &[(&str, &str)], log: PathBuf) -> (Process, String) {
    let (coordinator, line) = Process::start(
        "coordinator",
        "leakscan-coordinator",
        &["--listen", "127.0.0.1:0"],
        env,
        log,
        "listening on",
    );
    (coordinator, format!("http://{}", address_in(&line)))
}

/// A worker process named `name` (one engine thread, mirrors under `dir`)
/// leasing from `coordinators` with `worker_token`, its stderr to
/// `dir/<name>.log`. A worker holds no database credentials or keys: only
/// the credential the coordinator asks of it.
pub fn start_worker(dir: &Path, name: &str, coordinators: &str, worker_token: &str) -> Process {
    start_worker_lines(dir, name, coordinators, worker_token, &[]).0
}

/// [`start_worker`] with `extra` arguments, and its stdout lines up to the
/// one it is ready with.
pub fn start_worker_lines(
    dir: &Path,
    name: &str,
    coordinators: &str,
    worker_token: &str,
    extra: &[&str],
) -> (Process, Vec<String>) {
    let mirrors = dir.join(format!("mirrors-{name}"));
    let mut args = vec![
        "--coordinator-url",
        coordinators,
        "--name",
        name,
        "--threads",
        "1",
        "--mirror-dir",
        mirrors.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Process::start_lines(
        name,
        "leakscan-worker",
        &args,
        &[("LEAKSCAN_WORKER_TOKEN", worker_token)],
        dir.join(format!("{name}.log")),
        "connecting to",
    )
}

impl Api {
    /// A total rescan through the API, run to its end (asserted `done`).
    pub fn total_rescan(&self) -> Value {
        let job = self.expect(
            "PUT",
            "/rest/security/latest/status/total_rescan",
            None,
            200,
        );
        let done = wait_for_job(self, job["scanKey"].as_str().unwrap_or_default());
        assert_eq!(done["state"], "done", "{done}");
        done
    }
}

/// The job once it has ended (within 120 s).
pub fn wait_for_job(api: &Api, scan_key: &str) -> Value {
    wait_until(&format!("job {scan_key}"), Duration::from_secs(120), || {
        let job = api.expect(
            "GET",
            &format!("/rest/security/latest/jobs/{scan_key}"),
            None,
            200,
        );
        let state = job["state"].as_str().unwrap_or_default().to_string();
        (state != "queued" && state != "running").then_some(job)
    })
}
