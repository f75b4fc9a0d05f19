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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming().flatten() {
            held.push(socket);
        }
    });
    address
}
