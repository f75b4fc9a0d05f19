//! E-mail when a job ends (docs/ARCHITECTURE.md, "E-mail"): the leader
//! takes each due outbox row, writes the job's summary (plain text and
//! HTML) and sends it over SMTP with lettre, marking the row sent in the
//! transaction that claimed it. A failed attempt is retried with backoff; a
//! down server or a refused address never holds up a scan.

use std::time::Duration;

use leakscan_store::{
    email::{self, NewFinding},
    jobs::Job,
};
use lettre::{
    message::{Mailbox, MultiPart},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where and as whom messages go.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtp://[user:password@]host[:port][?tls=required]` (STARTTLS when
    /// `tls=required`) or `smtps://…` (TLS from the start).
    pub smtp_url: String,
    /// The sender, e.g. `leakscan <leakscan@example.com>`.
    pub from: String,
    /// The gateway's URL, for the links in messages.
    pub public_url: Option<String>,
    /// How often the outbox is looked at.
    pub interval: Duration,
}

impl MailConfig {
    /// Checks the URL and the sender before the coordinator starts.
    pub fn validate(&self) -> Result<(), String> {
        self.from
            .parse::<Mailbox>()
            .map_err(|error| format!("LEAKSCAN_SMTP_FROM {:?}: {error}", self.from))?;
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.smtp_url)
            .map_err(|error| format!("LEAKSCAN_SMTP_URL: {error}"))?;
        Ok(())
    }
}

/// The mail flags the coordinator and `leakscan up` share.
#[derive(Debug, Clone, clap::Args)]
pub struct MailArgs {
    /// SMTP server for the summaries of jobs started with `email=`:
    /// `smtp://[user:password@]host[:port][?tls=required]` (STARTTLS) or
    /// `smtps://…`; without it, summaries wait in the outbox.
    #[arg(long, env = "LEAKSCAN_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The summaries' sender.
    #[arg(
        long,
        env = "LEAKSCAN_SMTP_FROM",
        default_value = "leakscan <leakscan@localhost>"
    )]
    pub smtp_from: String,
    /// The gateway's URL, for links in the summaries.
    #[arg(long, env = "LEAKSCAN_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl MailArgs {
    /// The mail configuration the flags give (checked), none without an
    /// SMTP URL; `default_public_url` when no public URL is given.
    pub fn config(&self, default_public_url: Option<String>) -> Result<Option<MailConfig>, String> {
        let Some(smtp_url) = self.smtp_url.clone() else {
            return Ok(None);
        };
        let config = MailConfig {
            smtp_url,
            from: self.smtp_from.clone(),
            public_url: self.public_url.clone().or(default_public_url),
            interval: Duration::from_secs(5),
        };
        config.validate()?;
        Ok(Some(config))
    }
}

/// Retry delay after `attempts` failed attempts: 30 s doubling, at most 1 h.
pub fn backoff(attempts: i32) -> Duration {
    Duration::from_secs((30u64 << attempts.clamp(0, 7)).min(3600))
}

/// Delivers due messages while leading.
pub async fn deliver(
    config: MailConfig,
    pool: PgPool,
    state: std::sync::Arc<crate::CoordinatorState>,
    stop: CancellationToken,
) {
    let transport = match AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url) {
        Ok(builder) => builder.timeout(Some(Duration::from_secs(60))).build(),
        Err(error) => {
            warn!(%error, "the SMTP URL is invalid: no e-mail is sent");
            return;
        }
    };
    loop {
        loop {
            let claimed = match email::claim_next(&pool).await {
                Ok(Some(claimed)) => claimed,
                Ok(None) => break,
                Err(error) => {
                    warn!(%error, "cannot read the e-mail outbox");
                    break;
                }
            };
            let message = compose(&config, &pool, &claimed.job, &claimed.address).await;
            let (id, address) = (claimed.id, claimed.address.clone());
            let result = match message {
                Ok(message) => tokio::select! {
                    // Stopped mid-send (leadership lost, shutdown): the
                    // claim is dropped and the next leader sends it.
                    () = stop.cancelled() => return,
                    sent = transport.send(message) => sent.map(|_| ()).map_err(|error| error.to_string()),
                },
                Err(error) => Err(error),
            };
            let recorded = match result {
                Ok(()) => {
                    info!(outbox = id, scan_key = %claimed.job.scan_key, "job summary e-mailed");
                    state
                        .metrics
                        .emails
                        .get_or_create(&vec![("result", "sent".into())])
                        .inc();
                    claimed.sent().await
                }
                Err(error) => {
                    let delay = backoff(claimed.attempts);
                    warn!(outbox = id, %address, %error, retry_in_s = delay.as_secs(), "e-mail not sent");
                    state
                        .metrics
                        .emails
                        .get_or_create(&vec![("result", "failed".into())])
                        .inc();
                    claimed.failed(&error, delay).await
                }
            };
            if let Err(error) = recorded {
                warn!(%error, outbox = id, "cannot record the e-mail's outcome");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

fn scope_text(job: &Job) -> String {
    match job.scope.as_str() {
        "total" => "total rescan".to_string(),
        "project" => format!(
            "rescan of project {}",
            job.project_key.as_deref().unwrap_or("")
        ),
        "repository" => format!(
            "rescan of {}/{}",
            job.project_key.as_deref().unwrap_or(""),
            job.repository_slug.as_deref().unwrap_or("")
        ),
        _ => format!(
            "scan of {}/{} branch {}",
            job.project_key.as_deref().unwrap_or(""),
            job.repository_slug.as_deref().unwrap_or(""),
            job.branch.as_deref().unwrap_or("")
        ),
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The job's summary to `address`: scope, outcome, duration, branches
/// scanned, new findings by severity (secrets redacted) and links.
pub async fn compose(
    config: &MailConfig,
    pool: &PgPool,
    job: &Job,
    address: &str,
) -> Result<Message, String> {
    const LISTED: i64 = 50;
    let (counts, listed) = email::new_findings(pool, job, LISTED)
        .await
        .map_err(|error| error.to_string())?;
    let total: i64 = counts.iter().map(|(_, count)| count).sum();
    let scope = scope_text(job);
    let duration = match (job.started_at, job.finished_at) {
        (Some(started), Some(finished)) => format!(
            "{:.0} s",
            (finished - started).num_milliseconds() as f64 / 1000.0
        ),
        _ => "-".to_string(),
    };
    let by_severity: Vec<String> = ["CRITICAL", "HIGH", "MEDIUM", "LOW"]
        .iter()
        .filter_map(|severity| {
            counts
                .iter()
                .find(|(s, _)| s == severity)
                .map(|(_, count)| format!("{severity} {count}"))
        })
        .collect();
    let base = config
        .public_url
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    let links = [
        (
            "Dashboard",
            format!("{base}/rest/security/latest/dashboard"),
        ),
        (
            "Job",
            format!("{base}/rest/security/latest/jobs/{}", job.scan_key),
        ),
        (
            "Findings (zip of CSVs)",
            format!("{base}/rest/security/latest/export-report?confirmExpensiveOperation=true"),
        ),
    ];
    let line = |f: &NewFinding| {
        let location = match f.line {
            Some(line) => format!("{}:{line}", f.path),
            None => f.path.clone(),
        };
        format!(
            "{} {}/{} ({}) {location} {} {}",
            f.severity, f.project_key, f.slug, f.branch, f.rule_name, f.redacted
        )
    };
    let subject = format!(
        "leakscan: {scope} {} - {total} new finding{}",
        job.state,
        if total == 1 { "" } else { "s" }
    );
    let mut text = format!(
        "The {scope} {} ended: {}.\n\nScan key: {}\nRequested by: {}\nDuration: {duration}\nBranches scanned: {} of {}\nNew findings: {total}{}\n",
        job.scan_key,
        job.state,
        job.scan_key,
        job.requested_by,
        job.tasks_done,
        job.tasks_total,
        if by_severity.is_empty() { String::new() } else { format!(" ({})", by_severity.join(", ")) },
    );
    if let Some(error) = &job.error {
        text.push_str(&format!("Error: {error}\n"));
    }
    if !listed.is_empty() {
        text.push('\n');
        for finding in &listed {
            text.push_str(&format!("  {}\n", line(finding)));
        }
        if total > listed.len() as i64 {
            text.push_str(&format!("  and {} more\n", total - listed.len() as i64));
        }
    }
    if !base.is_empty() {
        text.push('\n');
        for (name, url) in &links {
            text.push_str(&format!("{name}: {url}\n"));
        }
    }
    let mut html = format!(
        "<html><body><h2>leakscan: {} {}</h2><table>\
         <tr><td>Scan key</td><td>{}</td></tr><tr><td>Requested by</td><td>{}</td></tr>\
         <tr><td>Duration</td><td>{duration}</td></tr><tr><td>Branches scanned</td><td>{} of {}</td></tr>\
         <tr><td>New findings</td><td>{total} {}</td></tr></table>",
        html_escape(&scope),
        html_escape(&job.state),
        html_escape(&job.scan_key),
        html_escape(&job.requested_by),
        job.tasks_done,
        job.tasks_total,
        html_escape(&by_severity.join(", ")),
    );
    if !listed.is_empty() {
        html.push_str("<ul>");
        for finding in &listed {
            html.push_str(&format!("<li>{}</li>", html_escape(&line(finding))));
        }
        html.push_str("</ul>");
    }
    if !base.is_empty() {
        html.push_str("<p>");
        for (name, url) in &links {
            html.push_str(&format!(
                "<a href=\"{}\">{}</a> ",
                html_escape(url),
                html_escape(name)
            ));
        }
        html.push_str("</p>");
    }
    html.push_str("</body></html>");
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|error| format!("sender: {error}"))?;
    let to: Mailbox = address
        .parse()
        .map_err(|error| format!("address {address:?}: {error}"))?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|error| error.to_string())
}
