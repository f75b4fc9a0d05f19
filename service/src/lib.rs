//! `leakscan-service`: what every leakscan server binary shares.
//!
//! - [`init_logging`]: structured log lines on stderr, filtered by
//!   `LEAKSCAN_LOG` (default `info`), as JSON when `LEAKSCAN_LOG_FORMAT=json`.
//! - [`cancel_on_signal`]: turns SIGINT/SIGTERM into a cancelled
//!   [`CancellationToken`], the root of each binary's graceful shutdown.
//! - [`MasterKeyArgs`]: the `--master-key` / `--master-key-file` flags.
//! - [`ops`]: the health probes and `/metrics`.
//! - [`telemetry`]: traces over OTLP, and `traceparent` in and out.

pub mod ops;
pub mod telemetry;

use std::path::PathBuf;

use leakscan_store::secrets::MasterKey;
use tokio_util::sync::CancellationToken;

/// The master key of stored secrets, as every binary that needs it takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct MasterKeyArgs {
    /// Master key (64 hex digits) that wraps the data keys of stored secrets.
    #[arg(
        long,
        env = "LEAKSCAN_MASTER_KEY",
        hide_env_values = true,
        conflicts_with = "master_key_file"
    )]
    pub master_key: Option<String>,
    /// File holding the master key (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "LEAKSCAN_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

impl MasterKeyArgs {
    /// The key given, if any; a malformed key or unreadable file is an error.
    pub fn load(&self) -> Result<Option<MasterKey>, leakscan_store::StoreError> {
        match (&self.master_key, &self.master_key_file) {
            (Some(hex), _) => MasterKey::from_hex(hex.trim()).map(Some),
            (None, Some(path)) => MasterKey::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Sets up the global log subscriber once (later calls do nothing).
pub fn init_logging() {
    init_subscriber(None);
}

/// The log subscriber: lines on stderr, filtered by `LEAKSCAN_LOG` (default
/// `info`), as JSON when `LEAKSCAN_LOG_FORMAT=json`; plus `extra` (the
/// trace exporter's layer) when given.
pub(crate) fn init_subscriber(
    extra: Option<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>>,
) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, Layer as _};
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEAKSCAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LEAKSCAN_LOG_FORMAT").as_deref() == Ok("json");
    let lines = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(extra)
        .with(lines)
        .try_init();
}

/// Cancels `shutdown` on SIGINT or SIGTERM (what Kubernetes sends).
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Prepares a git command as the gateway and the workers run git against a
/// clone source: no terminal prompt and no stdin, only the `file`, `http`,
/// `https` and `ssh` transports (never `ext::`), ssh in batch mode (keys
/// and known hosts from the service account's `~/.ssh`, or the operator's
/// own `GIT_SSH_COMMAND`), killed when its future is dropped, and
/// credentials from the given git credentials files only
/// ([`git_credentials_env`]).
pub fn prepare_git(
    command: &mut tokio::process::Command,
    credentials: &[&std::path::Path],
) -> Result<(), String> {
    if !credentials.is_empty() {
        git_credentials_env(command, credentials)?;
    }
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "file:http:https:ssh")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    Ok(())
}

/// Makes `command` (a git command) read credentials from `files` only, in
/// that order: git credentials files (`https://user:token@host` lines, as
/// `git credential-store` keeps them), the operator's
/// (`LEAKSCAN_GIT_CREDENTIALS_FILE`) or one written for a task
/// ([`task_credentials_file`]). Helpers configured elsewhere are reset, so
/// no credential leaks to another host and none ends up in a URL, a log or
/// the database.
pub fn git_credentials_env(
    command: &mut tokio::process::Command,
    files: &[&std::path::Path],
) -> Result<(), String> {
    command
        .env("GIT_CONFIG_COUNT", (files.len() + 1).to_string())
        .env("GIT_CONFIG_KEY_0", "credential.helper")
        .env("GIT_CONFIG_VALUE_0", "");
    for (index, file) in files.iter().enumerate() {
        let path = file
            .to_str()
            .filter(|path| !path.contains(['\'', '\n', '\\']))
            .ok_or_else(|| format!("unusable git credentials file name {}", file.display()))?;
        command
            .env(format!("GIT_CONFIG_KEY_{}", index + 1), "credential.helper")
            .env(
                format!("GIT_CONFIG_VALUE_{}", index + 1),
                format!("store --file='{path}'"),
            );
    }
    Ok(())
}

/// A git credentials file holding `line` alone (`scheme://user:password@host`,
/// a credential the coordinator handed over with a task), readable by this
/// user only and removed when dropped.
pub fn task_credentials_file(line: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    // NamedTempFile makes the file with mode 0600.
    let mut file = tempfile::Builder::new()
        .prefix("leakscan-credentials-")
        .tempfile()?;
    writeln!(file, "{}", line.trim())?;
    file.flush()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// What `git credential fill` answers for `host` with `file` as the
    /// only store, while the user's own configuration names another helper.
    async fn fill(files: &[&std::path::Path], host: &str, home: &std::path::Path) -> String {
        let mut command = tokio::process::Command::new("git");
        git_credentials_env(&mut command, files).unwrap();
        let mut child = command
            .args(["credential", "fill"])
            .env("HOME", home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("protocol=https\nhost={host}\n\n").as_bytes())
            .await
            .unwrap();
        drop(stdin);
        String::from_utf8(child.wait_with_output().await.unwrap().stdout).unwrap()
    }

    /// Regression (issue 18): git told to send stored credentials before
    /// any challenge (`http.proactiveAuth`) asks for one for every host,
    /// and with prompts off fails on a server that needs none.
    #[tokio::test]
    async fn a_public_server_is_read_while_a_credentials_file_is_given() {
        let repository = leakscan_testkit::GitRepo::new();
        repository.write("a.txt", "hello\n");
        repository.commit_all("first");
        let served = tempfile::tempdir().unwrap();
        leakscan_testkit::git_http::publish_bare(repository.path(), served.path(), "P/r.git");
        let server = leakscan_testkit::git_http::GitHttpServer::start_anonymous(served.path());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, "https://scanner:tok-7Hq2Lm9Zx4@git.example.com\n").unwrap();
        let mut command = tokio::process::Command::new("git");
        prepare_git(&mut command, &[&file]).unwrap();
        let output = command
            .args(["ls-remote", &server.url("P/r.git")])
            .env("HOME", dir.path())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("refs/heads/main"));
    }

    #[tokio::test]
    async fn git_takes_credentials_from_the_operators_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("git credentials");
        std::fs::write(&file, "https://scanner:tok-7Hq2Lm9Zx4@git.example.com\n").unwrap();
        // A helper in the user's configuration that would answer for any host.
        let other = dir.path().join("other");
        std::fs::write(
            &other,
            "https://someone:elsewhere-secret@other.example.com\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".gitconfig"),
            format!(
                "[credential]\n\thelper = store --file={}\n",
                other.display()
            ),
        )
        .unwrap();
        let answer = fill(&[&file], "git.example.com", dir.path()).await;
        assert!(answer.contains("username=scanner\n"), "{answer}");
        assert!(answer.contains("password=tok-7Hq2Lm9Zx4\n"), "{answer}");
        // The user's helper is not asked: no credentials for its host.
        let answer = fill(&[&file], "other.example.com", dir.path()).await;
        assert!(!answer.contains("elsewhere-secret"), "{answer}");
        // A file name git's helper syntax cannot carry is refused.
        let mut command = tokio::process::Command::new("git");
        assert!(git_credentials_env(&mut command, &[std::path::Path::new("/tmp/it's")]).is_err());
    }

    /// A credential handed over with a task (issue 13: moved out of an old
    /// clone URL) is asked first, for its host only; the operator's file
    /// still answers for the others. Its file is private and goes away.
    #[tokio::test]
    async fn a_tasks_credential_file_answers_beside_the_operators() {
        let dir = tempfile::tempdir().unwrap();
        let operator = dir.path().join("operator");
        std::fs::write(
            &operator,
            "https://scanner:tok-7Hq2Lm9Zx4@git.example.com\n",
        )
        .unwrap();
        let task =
            task_credentials_file("https://ci-bot:moved-9Fk2Qp@legacy.example.com:8443").unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(task.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        let files = [task.path(), operator.as_path()];
        let answer = fill(&files, "legacy.example.com:8443", dir.path()).await;
        assert!(answer.contains("username=ci-bot\n"), "{answer}");
        assert!(answer.contains("password=moved-9Fk2Qp\n"), "{answer}");
        let answer = fill(&files, "git.example.com", dir.path()).await;
        assert!(answer.contains("password=tok-7Hq2Lm9Zx4\n"), "{answer}");
        let answer = fill(&files, "legacy.example.com", dir.path()).await;
        assert!(!answer.contains("moved-9Fk2Qp"), "another port: {answer}");
        let path = task.path().to_path_buf();
        drop(task);
        assert!(!path.exists());
    }
}
