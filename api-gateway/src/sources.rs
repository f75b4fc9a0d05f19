//! Where repositories may be cloned from (docs/ARCHITECTURE.md, "Clone
//! sources"). A project administrator registers a clone URL, and the
//! gateway and the workers then run git against it, so the operator decides
//! what it may be: local paths inside the repository roots or directories
//! the operator names (after symlinks are resolved), and http(s) URLs of
//! hosts the operator allows. Credentials never sit in a URL: git takes
//! them from the operator's credentials file.

use std::path::{Path, PathBuf};

/// The operator's clone-source flags, shared by `leakscan-gateway` and
/// `leakscan up`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CloneSourceArgs {
    /// Directories besides the repository roots that registered local
    /// clone URLs may point into (repeatable, or comma-separated).
    #[arg(
        long = "allowed-local-path",
        env = "LEAKSCAN_ALLOWED_LOCAL_PATHS",
        value_delimiter = ','
    )]
    pub allowed_local_paths: Vec<PathBuf>,
    /// Hosts registered http(s) clone URLs may name: `host`, `host:port` or
    /// `*.domain` (repeatable, or comma-separated); none by default.
    #[arg(
        long = "allowed-remote",
        env = "LEAKSCAN_ALLOWED_REMOTES",
        value_delimiter = ','
    )]
    pub allowed_remotes: Vec<String>,
    /// A git credentials file (`https://user:token@host` lines) for remote
    /// repositories; credentials never go in clone URLs.
    #[arg(long, env = "LEAKSCAN_GIT_CREDENTIALS_FILE")]
    pub git_credentials_file: Option<PathBuf>,
}

/// What a clone URL names.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape<'a> {
    /// An http(s) URL.
    Remote,
    /// A path on this machine (from an absolute path or a `file://` URL).
    Local(&'a str),
}

/// Only transports that cannot run commands: http(s), ssh (`ssh://`
/// URLs), `file://` URLs and absolute paths (never `ext::`, never
/// something git reads as an option), without spaces or control
/// characters, at most 2048 bytes.
pub fn clone_url_shape(url: &str) -> Result<Shape<'_>, String> {
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(
            "a clone URL holds no spaces or control characters and at most 2048 bytes".into(),
        );
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("ssh://")
    {
        Ok(Shape::Remote)
    } else if lower.starts_with("file:///") {
        Ok(Shape::Local(&url["file://".len()..]))
    } else if url.starts_with('/') {
        Ok(Shape::Local(url))
    } else {
        Err("use an http(s) or ssh:// URL, a file:// URL or an absolute path".into())
    }
}

/// The operator's rules for clone URLs.
#[derive(Debug, Clone, Default)]
pub struct CloneSources {
    /// Directories local clone URLs may point into.
    pub local_roots: Vec<PathBuf>,
    /// Hosts http(s) clone URLs may name: `host`, `host:port` or
    /// `*.domain` (any subdomain); empty: no remote URLs.
    pub remote_hosts: Vec<String>,
}

impl CloneSources {
    /// Why `url` may not be cloned, if it may not.
    pub fn check(&self, url: &str) -> Result<(), String> {
        match clone_url_shape(url)? {
            Shape::Remote => self.check_remote(url),
            Shape::Local(path) => self.check_local(Path::new(path)),
        }
    }

    fn check_remote(&self, url: &str) -> Result<(), String> {
        let rest = &url[url.find("://").map_or(0, |at| at + 3)..];
        let mut authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        // ssh names the account to log in as (`ssh://git@host/…`): a user
        // name without a password is no credential.
        if url
            .get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("ssh://"))
        {
            if let Some((user, host)) = authority.split_once('@') {
                if !user.is_empty() && !user.contains(':') {
                    authority = host;
                }
            }
        }
        if authority.contains('@') {
            return Err(
                "credentials do not belong in a clone URL: the operator gives them to git in the credentials file (LEAKSCAN_GIT_CREDENTIALS_FILE)"
                    .into(),
            );
        }
        let authority = authority.to_ascii_lowercase();
        // host[:port], or [v6 address][:port].
        let host = match authority.find(']') {
            Some(end) if authority.starts_with('[') => &authority[..=end],
            _ => authority.split(':').next().unwrap_or_default(),
        };
        if host.is_empty() {
            return Err("the clone URL names no host".into());
        }
        let allowed = self.remote_hosts.iter().any(|pattern| {
            let pattern = pattern.trim().to_ascii_lowercase();
            if let Some(domain) = pattern.strip_prefix("*.") {
                host.ends_with(&format!(".{domain}"))
            } else if pattern.contains(':') && !pattern.starts_with('[') {
                pattern == authority
            } else {
                pattern == host
            }
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "host {host:?} is not among the hosts the operator allows (LEAKSCAN_ALLOWED_REMOTES)"
            ))
        }
    }

    fn check_local(&self, path: &Path) -> Result<(), String> {
        let resolved = std::fs::canonicalize(path)
            .map_err(|_| format!("{} does not exist", path.display()))?;
        let inside = self
            .local_roots
            .iter()
            .filter_map(|root| std::fs::canonicalize(root).ok())
            .any(|root| resolved.starts_with(root));
        if inside {
            Ok(())
        } else {
            Err(format!(
                "{} is outside the repository roots and the directories the operator allows (LEAKSCAN_ALLOWED_LOCAL_PATHS)",
                path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(root: &Path, hosts: &[&str]) -> CloneSources {
        CloneSources {
            local_roots: vec![root.to_path_buf()],
            remote_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// Regression (issue 13): a project administrator could register any
    /// path on the gateway's disk, any file:// URL and any http(s) URL
    /// (the gateway's ls-remote reached whatever host it named).
    #[test]
    fn only_the_operators_roots_and_hosts_are_clone_sources() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("P/r.git")).unwrap();
        std::fs::create_dir_all(outside.path().join("secret.git")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        let sources = sources(
            root.path(),
            &[
                "git.example.com",
                "*.corp.example",
                "mirror.example.org:8443",
            ],
        );
        let inside = root.path().join("P/r.git");
        for ok in [
            inside.display().to_string(),
            format!("file://{}", inside.display()),
            "https://git.example.com/scm/p/r.git".into(),
            "http://GIT.example.com:7990/scm/p/r.git".into(),
            "https://build.corp.example/r.git".into(),
            "https://mirror.example.org:8443/r.git".into(),
            "ssh://git@git.example.com:7999/p/r.git".into(),
            "ssh://git.example.com/r.git".into(),
        ] {
            assert_eq!(sources.check(&ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (
                outside.path().join("secret.git").display().to_string(),
                "outside",
            ),
            (
                format!("{}/escape/secret.git", root.path().display()),
                "outside",
            ),
            (format!("{}/P/../../", root.path().display()), "outside"),
            ("/etc".into(), "outside"),
            ("/nonexistent/repo.git".into(), "does not exist"),
            ("https://evil.example.net/r.git".into(), "not among"),
            ("https://git.example.com.evil.net/r.git".into(), "not among"),
            ("https://corp.example/r.git".into(), "not among"),
            ("https://mirror.example.org/r.git".into(), "not among"),
            (
                "http://169.254.169.254/latest/meta-data".into(),
                "not among",
            ),
            (
                "https://bob:token@git.example.com/r.git".into(),
                "credentials",
            ),
            ("ext::sh -c id".into(), "spaces"),
            ("git.example.com:r.git".into(), "use an http(s) or ssh"),
            (
                "ssh://bob:secret@git.example.com/r.git".into(),
                "credentials",
            ),
            ("ssh://git@evil.example.net/r.git".into(), "not among"),
            ("-uupload-pack=x".into(), "use an http(s)"),
            ("relative/path".into(), "use an http(s)"),
        ] {
            let error = sources.check(&bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        // Without allowed hosts, no remote URL at all.
        let local_only = super::CloneSources {
            local_roots: vec![root.path().to_path_buf()],
            remote_hosts: Vec::new(),
        };
        assert!(local_only.check("https://git.example.com/r.git").is_err());
    }
}
