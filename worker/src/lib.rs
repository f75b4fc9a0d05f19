//! `leakscan-worker`: stateless. It holds no database credentials; it
//! registers with the coordinator, leases branch tasks, keeps a local
//! mirror of each repository (a cache: losing it costs only time), scans
//! the branch's commits not yet scanned with the engine, sends the findings
//! in batches, heartbeats progress, and stops promptly when told to cancel.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use leakscan_engine::{
    git::{effective_policy, scan_repository_with_cache},
    BlobCache, BlobId, CachedMatch, EngineError, GitScanRequest, Policy, PolicySpec, RefSelection,
    RuleSetCache, ScanOptions, ScanProgress, Secret,
};
use leakscan_proto::auth::{AttachToken, TokenError};
use leakscan_proto::v1::{
    coordinator_client::CoordinatorClient, BlobMatch, BlobResult, CompleteTaskRequest,
    FailTaskRequest, Finding, HeartbeatRequest, LeaseTaskRequest, LookupBlobsRequest, Progress,
    RegisterRequest, RegisterResponse, SendFindingsRequest, StoreBlobResultsRequest, Task,
};
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use tracing::{info, warn, Instrument as _};

pub mod metrics;
pub use metrics::{TaskEnd, WorkerState};

/// The coordinator's client: every call carries the worker token.
type Client = CoordinatorClient<InterceptedService<Channel, AttachToken>>;

/// How long connecting to the coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call may take beyond the longest LeaseTask long poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a Register call may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings, so a coordinator that vanished is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

type MirrorLocks = Arc<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>;

/// Findings per SendFindings call, at most.
const FINDINGS_BATCH: usize = 500;

/// Encoded bytes per SendFindings call, at most: well under tonic's 4 MiB
/// message limit, which a batch of long secrets (key files) used to exceed
/// and then never complete.
const FINDINGS_BATCH_BYTES: usize = 1 << 20;

/// `findings` cut into runs of at most `max_count` findings and
/// `max_bytes` encoded bytes (a single larger finding goes alone).
fn findings_batches(findings: &[Finding], max_count: usize, max_bytes: usize) -> Vec<&[Finding]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, finding) in findings.iter().enumerate() {
        // A repeated field's entry: its bytes, a tag and a length.
        let size = prost::Message::encoded_len(finding) + 6;
        if index > start && (index - start == max_count || bytes + size > max_bytes) {
            batches.push(&findings[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < findings.len() {
        batches.push(&findings[start..]);
    }
    batches
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// e.g. `http://127.0.0.1:7991`
    pub coordinator_url: String,
    pub name: String,
    /// Tasks at once.
    pub slots: u32,
    /// Where repository mirrors are kept.
    pub mirror_dir: PathBuf,
    /// Engine threads per task (0: one per core).
    pub threads: usize,
    /// Longest long poll for a task.
    pub lease_wait_ms: u32,
    /// The credential the coordinator expects (`LEAKSCAN_WORKER_TOKEN`).
    pub token: String,
    /// A git credentials file for remote repositories
    /// (`LEAKSCAN_GIT_CREDENTIALS_FILE`); clone URLs hold none.
    pub git_credentials: Option<PathBuf>,
    /// TLS to the coordinator (an `https://` URL); plaintext without.
    pub tls: Option<WorkerTls>,
    /// On shutdown, how long running tasks may go on before they are
    /// stopped and handed back (`--drain-timeout`).
    pub drain_timeout: Duration,
}

/// TLS to the coordinator: the CA (PEM) that signed its certificate, and
/// for mutual TLS this worker's certificate chain and key (PEM).
#[derive(Debug, Clone)]
pub struct WorkerTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl WorkerTls {
    fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("coordinator: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("coordinator: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("no coordinator URL given")]
    NoCoordinator,
}

/// Runs until `shutdown`: `slots` loops, each leasing and scanning tasks.
/// See [`run_with_state`].
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    run_with_state(config, Arc::new(WorkerState::default()), shutdown).await
}

/// Runs until `shutdown`, counting into `state`. Once `shutdown` comes the
/// worker drains: it leases nothing more, and a running task may finish
/// within `config.drain_timeout`; one still running then is stopped and
/// handed back (failed as retryable), so another worker takes it over.
/// Returns when no task runs any more.
pub async fn run_with_state(
    config: WorkerConfig,
    state: Arc<WorkerState>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let credential = AttachToken::new(&config.token)?;
    let coordinators = Arc::new(Coordinators::new(&config, &credential)?);
    // No coordinator may lead yet (all starting, or standing by and
    // answering UNAVAILABLE): wait for one, as long as the worker runs.
    let registered = loop {
        match coordinators.register(&config).await {
            Ok(registered) => break registered,
            Err(WorkerError::Status(status)) if is_transient(&status) => {
                warn!(%status, "no coordinator leads yet: registering again in a second");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(error) => return Err(error),
        }
    };
    info!(worker_id = %registered.worker_id, "registered with the coordinator");
    state.set_registered();
    // Cancelled `drain_timeout` after `shutdown`: stops the running tasks.
    let stop_tasks = CancellationToken::new();
    let drain = tokio::spawn({
        let (shutdown, stop_tasks, state) =
            (shutdown.clone(), stop_tasks.clone(), Arc::clone(&state));
        let timeout = config.drain_timeout;
        async move {
            shutdown.cancelled().await;
            state.set_draining();
            info!(
                timeout_secs = timeout.as_secs_f64(),
                "draining: no more leases; running tasks may finish"
            );
            tokio::time::sleep(timeout).await;
            stop_tasks.cancel();
        }
    });
    let heartbeat = Duration::from_millis(u64::from(
        registered.heartbeat_interval_ms.clamp(100, 60_000),
    ));
    let mut loops = Vec::new();
    let rulesets = Arc::new(RuleSetCache::default());
    let mirror_locks = MirrorLocks::default();
    for _ in 0..config.slots {
        let (client_index, client) = coordinators.current();
        let slot = Slot {
            client,
            client_index,
            coordinators: Arc::clone(&coordinators),
            rulesets: Arc::clone(&rulesets),
            mirror_locks: Arc::clone(&mirror_locks),
            worker_id: registered.worker_id.clone(),
            config: config.clone(),
            heartbeat,
            state: Arc::clone(&state),
        };
        loops.push(tokio::spawn(slot.run(shutdown.clone(), stop_tasks.clone())));
    }
    for handle in loops {
        let _ = handle.await;
    }
    drain.abort();
    Ok(())
}

/// The coordinators a worker may call: `--coordinator-url` takes one URL
/// (a Kubernetes Service) or several separated by commas (the leader and
/// its standbys; only the leader serves, see docs/ARCHITECTURE.md). Calls
/// go to the one that answered last; a call that finds it unreachable moves
/// every slot on to the next, round the list. A standby that takes over
/// accepts the connections waiting at its port.
struct Coordinators {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Coordinators {
    fn new(config: &WorkerConfig, credential: &AttachToken) -> Result<Coordinators, WorkerError> {
        let mut clients = Vec::new();
        for url in config
            .coordinator_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
        {
            let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
                .map_err(WorkerError::Transport)?;
            if let Some(tls) = &config.tls {
                endpoint = endpoint.tls_config(tls.client_config())?;
            }
            let channel = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(Duration::from_millis(u64::from(config.lease_wait_ms)) + CALL_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy();
            clients.push(CoordinatorClient::with_interceptor(
                channel,
                credential.clone(),
            ));
        }
        if clients.is_empty() {
            return Err(WorkerError::NoCoordinator);
        }
        Ok(Coordinators {
            clients,
            current: AtomicUsize::new(0),
        })
    }

    /// The coordinator in use: its place in the list and a client.
    fn current(&self) -> (usize, Client) {
        let index = self.current.load(Ordering::SeqCst) % self.clients.len();
        (index, self.clients[index].clone())
    }

    /// The coordinator at `failed` did not answer: calls go to the next
    /// one. Several slots noticing the same failure move on once.
    fn fail_over(&self, failed: usize) {
        if self.clients.len() > 1 {
            let next = (failed + 1) % self.clients.len();
            if self
                .current
                .compare_exchange(failed, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                warn!(
                    from = failed,
                    to = next,
                    "coordinator unreachable: trying the next one"
                );
            }
        }
    }

    /// Registers with the first coordinator that answers, trying each once.
    async fn register(&self, config: &WorkerConfig) -> Result<RegisterResponse, WorkerError> {
        let mut last_error = None;
        for _ in 0..self.clients.len() {
            let (index, mut client) = self.current();
            // Registering answers at once: one that hangs (a coordinator
            // handing over) is given up soon and tried again, not after
            // the long-poll deadline of the channel.
            let answer = tokio::time::timeout(
                REGISTER_TIMEOUT,
                client.register(RegisterRequest {
                    worker_name: config.name.clone(),
                    slots: config.slots,
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
            )
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(
                    "the coordinator did not answer Register in time",
                ))
            });
            match answer {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if is_transient(&status) => {
                    self.fail_over(index);
                    last_error = Some(status);
                }
                Err(status) => return Err(status.into()),
            }
        }
        Err(last_error.map_or(WorkerError::NoCoordinator, WorkerError::Status))
    }
}

struct Slot {
    /// A client of the coordinator in use, and its place in the list.
    client: Client,
    client_index: usize,
    coordinators: Arc<Coordinators>,
    /// Compiled rulesets shared by the slots (a Vectorscan build takes
    /// about a second and a half).
    rulesets: Arc<RuleSetCache>,
    /// A lock per mirror directory, shared by the slots.
    mirror_locks: MirrorLocks,
    worker_id: String,
    config: WorkerConfig,
    heartbeat: Duration,
    state: Arc<WorkerState>,
}

impl Slot {
    /// Leases until `shutdown`; a running task stops at `stop_tasks`.
    async fn run(mut self, shutdown: CancellationToken, stop_tasks: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Another slot may have moved on to the next coordinator.
            (self.client_index, self.client) = self.coordinators.current();
            let leased = tokio::select! {
                () = shutdown.cancelled() => return,
                leased = self.client.lease_task(LeaseTaskRequest {
                    worker_id: self.worker_id.clone(),
                    wait_ms: self.config.lease_wait_ms,
                }) => leased,
            };
            let leased = leased.map(|response| {
                let traceparent = response
                    .metadata()
                    .get("traceparent")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string);
                (response.into_inner().task, traceparent)
            });
            match leased {
                Ok((Some(task), traceparent)) => {
                    // The scan joins the trace of the job's request (the
                    // lease's metadata names it).
                    let span = tracing::info_span!("scan task", task_id = %task.task_id, attempt = task.attempt);
                    leakscan_service::telemetry::continue_trace(&span, traceparent.as_deref());
                    self.run_task(task, &stop_tasks).instrument(span).await
                }
                Ok((None, _)) => {}
                Err(status) => {
                    warn!(%status, "cannot lease a task");
                    if is_transient(&status) {
                        self.fail_over();
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn run_task(&mut self, task: Task, stop: &CancellationToken) {
        info!(task_id = %task.task_id, branch = %task.branch, attempt = task.attempt, "scan task started");
        let started = std::time::Instant::now();
        self.state.task_started();
        let progress = Arc::new(ScanProgress::default());
        let mut heartbeat_client = self.client.clone();
        let outcome = {
            let work = self.scan(&task, Arc::clone(&progress));
            tokio::pin!(work);
            let mut ticker = tokio::time::interval(self.heartbeat);
            // Once told to stop, that branch is off: a cancelled token is
            // ready at every poll, and selecting it again would spin this
            // task without ever yielding to the runtime.
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = &mut work => break result,
                    () = stop.cancelled(), if !stopping => {
                        stopping = true;
                        progress.cancel.store(true, Ordering::Relaxed);
                    }
                    _ = ticker.tick() => {
                        let beat = heartbeat_client.heartbeat(HeartbeatRequest {
                            worker_id: self.worker_id.clone(),
                            task_id: task.task_id.clone(),
                            lease_id: task.lease_id.clone(),
                            progress: Some(progress_of(&progress)),
                        }).await;
                        match beat {
                            Ok(reply) if reply.get_ref().cancel => progress.cancel.store(true, Ordering::Relaxed),
                            Ok(_) => {}
                            // The lease is gone (expired, taken back): stop.
                            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                                progress.cancel.store(true, Ordering::Relaxed);
                            }
                            Err(status) => warn!(%status, "heartbeat failed"),
                        }
                    }
                }
            }
        };
        let (end, result) = match outcome {
            Ok(scanned) => {
                let findings = scanned.findings.len() as u64;
                let result = self.finish(&task, scanned, &progress).await;
                if result.is_ok() {
                    self.state.scanned(
                        progress.blobs_scanned.load(Ordering::Relaxed),
                        progress.bytes_scanned.load(Ordering::Relaxed),
                        findings,
                    );
                }
                (TaskEnd::Completed, result)
            }
            Err(TaskError::Cancelled) => {
                info!(task_id = %task.task_id, "scan task stopped");
                // Hand the task back unless the job was cancelled (then the
                // coordinator refuses, which is fine).
                (
                    TaskEnd::HandedBack,
                    self.fail(&task, "worker stopped", true).await,
                )
            }
            Err(TaskError::Failed { message, retryable }) => {
                warn!(task_id = %task.task_id, error = %message, "scan task failed");
                (TaskEnd::Failed, self.fail(&task, &message, retryable).await)
            }
        };
        self.state.task_ended(end, started.elapsed().as_secs_f64());
        if let Err(status) = result {
            warn!(task_id = %task.task_id, %status, "cannot report the task's end");
        }
    }

    /// Moves this slot, and the others, on to the next coordinator.
    fn fail_over(&mut self) {
        self.coordinators.fail_over(self.client_index);
        (self.client_index, self.client) = self.coordinators.current();
    }

    /// Calls the coordinator again on transient failures (the coordinator
    /// restarting, a busy database), with backoff, up to 6 tries.
    async fn with_retries<T, F, Fut>(&mut self, what: &str, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match call(self.client.clone()).await {
                Err(status) if attempt < 6 && is_transient(&status) => {
                    warn!(%status, attempt, what, "coordinator call failed, retrying");
                    self.fail_over();
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn finish(
        &mut self,
        task: &Task,
        scanned: Scanned,
        progress: &ScanProgress,
    ) -> Result<(), tonic::Status> {
        let findings = scanned.findings;
        for batch in findings_batches(&findings, FINDINGS_BATCH, FINDINGS_BATCH_BYTES) {
            let request = SendFindingsRequest {
                task_id: task.task_id.clone(),
                lease_id: task.lease_id.clone(),
                findings: batch.to_vec(),
            };
            // Idempotent on the coordinator's side: safe to send again.
            self.with_retries("send findings", |mut client| {
                let request = request.clone();
                async move { client.send_findings(traced(request)).await }
            })
            .await?;
        }
        let request = CompleteTaskRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            head_commit: scanned.head,
            progress: Some(progress_of(progress)),
            policy_digest: scanned.policy_digest,
            base_digest: task.base_digest.clone(),
            full_scan: scanned.full_scan,
        };
        let completed = self
            .with_retries("complete task", |mut client| {
                let request = request.clone();
                async move { client.complete_task(traced(request)).await }
            })
            .await;
        match completed {
            // A retry after a completion whose answer was lost.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                warn!(task_id = %task.task_id, %status, "task already ended");
            }
            other => {
                other?;
            }
        }
        info!(task_id = %task.task_id, findings = findings.len(), "scan task done");
        Ok(())
    }

    async fn fail(
        &mut self,
        task: &Task,
        error: &str,
        retryable: bool,
    ) -> Result<(), tonic::Status> {
        let request = FailTaskRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            error: error.into(),
            retryable,
        };
        self.with_retries("fail task", |mut client| {
            let request = request.clone();
            async move { client.fail_task(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Mirrors and scans: the whole history when the branch's effective
    /// policy changed since its last scan, only new commits otherwise.
    async fn scan(&self, task: &Task, progress: Arc<ScanProgress>) -> Result<Scanned, TaskError> {
        let repository = task.repository.clone().ok_or_else(|| TaskError::Failed {
            message: "task without a repository".into(),
            retryable: false,
        })?;
        let mirror = mirror_path(
            &self.config.mirror_dir,
            &repository.project_key,
            &repository.slug,
            &repository.clone_url,
        );
        // One update of a mirror at a time: two slots cloning into the same
        // directory would remove each other's clone.
        let mirror_lock = {
            let mut locks = self.mirror_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(mirror.clone()).or_default())
        };
        let updating = mirror_lock.lock().await;
        // The operator's credentials file, and a credential the coordinator
        // handed over for this repository (moved out of an old clone URL),
        // in a private file of its own while git runs.
        let task_credentials = if repository.clone_credential.is_empty() {
            None
        } else {
            Some(
                leakscan_service::task_credentials_file(&repository.clone_credential).map_err(
                    |error| TaskError::Failed {
                        message: format!("cannot write the task's git credentials: {error}"),
                        retryable: true,
                    },
                )?,
            )
        };
        let credentials: Vec<&Path> = task_credentials
            .as_ref()
            .map(|file| file.path())
            .into_iter()
            .chain(self.config.git_credentials.as_deref())
            .collect();
        // A git server that stops answering holds a clone until
        // GIT_TIMEOUT: a stopped task (drain, cancelled job) does not wait
        // for it. Dropping the update kills git; a half-made clone is
        // removed.
        tokio::select! {
            updated = update_mirror(
                &repository.clone_url,
                &mirror,
                &credentials,
                GIT_TIMEOUT,
            ) => updated?,
            () = stopped(&progress) => return Err(TaskError::Cancelled),
        }
        let head = git_output(
            &mirror,
            &[
                "rev-parse",
                "--verify",
                &format!("refs/heads/{}^{{commit}}", task.branch),
            ],
        )
        .await
        .map_err(|message| TaskError::Failed {
            message: format!("branch {:?}: {message}", task.branch),
            retryable: false,
        })?;
        drop(updating);
        let base = if task.policy_json.is_empty() {
            Policy::builtin_default()
        } else {
            serde_json::from_str::<PolicySpec>(&task.policy_json)
                .map_err(|error| error.to_string())
                .and_then(|spec| spec.resolve().map_err(|error| error.to_string()))
                .map_err(|message| TaskError::Failed {
                    message: format!("the task's policy is invalid: {message}"),
                    retryable: false,
                })?
        };
        let effective = {
            let (mirror, branch, base) = (mirror.clone(), task.branch.clone(), base.clone());
            tokio::task::spawn_blocking(move || effective_policy(&mirror, &branch, &base))
                .await
                .map_err(|error| TaskError::Failed {
                    message: format!("config thread: {error}"),
                    retryable: true,
                })?
                .map_err(|error| TaskError::Failed {
                    message: error.to_string(),
                    retryable: false,
                })?
        };
        let policy_digest = effective.digest();
        let mut incremental =
            !task.last_scanned_commit.is_empty() && task.last_scanned_digest == policy_digest;
        if incremental && head == task.last_scanned_commit {
            return Ok(Scanned {
                head,
                findings: Vec::new(),
                policy_digest,
                full_scan: false,
            });
        }
        // After a force-push the last scanned commit may be gone from the
        // mirror (a fresh mirror never fetched it) or no longer behind the
        // head: scanning "since" it would fail or keep findings of commits
        // the branch lost, so the branch is scanned whole instead.
        if incremental && !is_ancestor(&mirror, &task.last_scanned_commit, &head).await {
            tracing::info!(
                branch = %task.branch,
                "the last scanned commit is not behind the head (force-push): full scan"
            );
            incremental = false;
        }
        let request = GitScanRequest {
            refs: RefSelection::Branch(task.branch.clone()),
            since: incremental.then(|| task.last_scanned_commit.clone()),
            allow_shallow: false,
        };
        let options = ScanOptions {
            threads: self.config.threads,
            max_blob_size: task.max_blob_size,
            rulesets: Some(Arc::clone(&self.rulesets)),
            ..ScanOptions::default()
        };
        let cache = RemoteBlobCache {
            client: self.client.clone(),
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let report = tokio::task::spawn_blocking(move || {
            scan_repository_with_cache(&mirror, &base, &request, &options, &progress, &cache)
        })
        .await
        .map_err(|error| TaskError::Failed {
            message: format!("scan thread: {error}"),
            retryable: true,
        })?
        .map_err(|error| match error {
            EngineError::Cancelled => TaskError::Cancelled,
            other => TaskError::Failed {
                message: other.to_string(),
                retryable: true,
            },
        })?;
        let findings = report
            .findings
            .into_iter()
            .map(|finding| {
                let commit = finding
                    .commit
                    .unwrap_or_else(|| leakscan_engine::CommitMeta {
                        id: String::new(),
                        author: String::new(),
                        author_email: String::new(),
                        time: 0,
                        offset_minutes: 0,
                    });
                Finding {
                    rule_id: finding.rule_id,
                    rule_name: finding.rule_name,
                    severity: finding.severity.to_string(),
                    commit: commit.id,
                    path: finding.path,
                    line: finding.line.unwrap_or(0),
                    author: commit.author,
                    author_email: commit.author_email,
                    commit_time: commit.time,
                    secret: finding.secret.expose().to_vec(),
                    confidence: finding.confidence.to_string(),
                }
            })
            .collect();
        Ok(Scanned {
            head,
            findings,
            policy_digest,
            full_scan: !incremental,
        })
    }
}

/// What a scan task found.
struct Scanned {
    /// The branch head scanned.
    head: String,
    findings: Vec<Finding>,
    /// Digest of the effective policy scanned under.
    policy_digest: String,
    /// The whole history was scanned (not only commits since the last scan).
    full_scan: bool,
}

#[derive(Debug)]
enum TaskError {
    Cancelled,
    Failed { message: String, retryable: bool },
}

/// A call that may succeed when tried again (on the next coordinator).
/// CANCELLED is the transport's answer when the connection closed under a
/// call (a replica handing over lets go of its connections); the worker
/// never cancels a call of its own that it then awaits.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
    )
}

fn progress_of(progress: &ScanProgress) -> Progress {
    Progress {
        commits_total: progress.commits.load(Ordering::Relaxed),
        commits_done: progress.commits_diffed.load(Ordering::Relaxed),
        blobs_total: progress.blobs_total.load(Ordering::Relaxed),
        blobs_done: progress.blobs_scanned.load(Ordering::Relaxed),
        bytes_scanned: progress.bytes_scanned.load(Ordering::Relaxed),
        blobs_read: progress
            .blobs_scanned
            .load(Ordering::Relaxed)
            .saturating_sub(progress.blobs_from_cache.load(Ordering::Relaxed)),
    }
}

/// Most blobs per cache call (the coordinator's limit).
const CACHE_CALL_BLOBS: usize = 10_000;

/// The blob-result cache behind the coordinator, called from the engine's
/// scan threads (blocking on the runtime). A failed call costs only reads:
/// lookups answer "unknown", stores are dropped.
struct RemoteBlobCache {
    client: Client,
    task_id: String,
    lease_id: String,
    runtime: tokio::runtime::Handle,
}

impl BlobCache for RemoteBlobCache {
    fn lookup(&self, ruleset_digest: &str, blobs: &[BlobId]) -> Vec<Option<Vec<CachedMatch>>> {
        let mut answers = Vec::with_capacity(blobs.len());
        for chunk in blobs.chunks(CACHE_CALL_BLOBS) {
            let request = LookupBlobsRequest {
                task_id: self.task_id.clone(),
                lease_id: self.lease_id.clone(),
                ruleset_digest: ruleset_digest.to_string(),
                blob_ids: chunk.iter().map(|blob| blob.0.to_vec()).collect(),
            };
            let mut client = self.client.clone();
            match self.runtime.block_on(client.lookup_blobs(request)) {
                Ok(reply) if reply.get_ref().results.len() == chunk.len() => {
                    answers.extend(reply.into_inner().results.into_iter().map(|result| {
                        result.known.then(|| {
                            result
                                .matches
                                .into_iter()
                                .map(|m| CachedMatch {
                                    rule_id: m.rule_id,
                                    line: m.line,
                                    start: m.start,
                                    end: m.end,
                                    secret: Secret::new(&m.secret),
                                    context: m.context,
                                })
                                .collect()
                        })
                    }));
                }
                Ok(_) => {
                    warn!("blob cache answered a different number of blobs; reading them");
                    answers.extend(std::iter::repeat_n(None, chunk.len()));
                }
                Err(status) => {
                    warn!(%status, "blob cache lookup failed; reading the blobs");
                    answers.extend(std::iter::repeat_n(None, chunk.len()));
                }
            }
        }
        answers
    }

    fn store(&self, ruleset_digest: &str, results: Vec<(BlobId, Vec<CachedMatch>)>) {
        for chunk in results.chunks(CACHE_CALL_BLOBS) {
            let request = StoreBlobResultsRequest {
                task_id: self.task_id.clone(),
                lease_id: self.lease_id.clone(),
                ruleset_digest: ruleset_digest.to_string(),
                results: chunk
                    .iter()
                    .map(|(blob, matches)| BlobResult {
                        blob_id: blob.0.to_vec(),
                        known: true,
                        matches: matches
                            .iter()
                            .map(|m| BlobMatch {
                                rule_id: m.rule_id.clone(),
                                line: m.line,
                                start: m.start,
                                end: m.end,
                                secret: m.secret.expose().to_vec(),
                                context: m.context.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
            };
            let mut client = self.client.clone();
            if let Err(status) = self.runtime.block_on(client.store_blob_results(request)) {
                warn!(%status, "blob cache store failed");
            }
        }
    }
}

/// A path component from a project key or slug (already validated by the
/// catalog; this keeps a bad one from escaping the mirror directory).
fn safe_component(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// Clones the repository as a mirror, or fetches into the existing mirror.
/// Where a repository's mirror lives: under its project and slug, and a
/// digest of its clone URL, so that a repository registered again from
/// another source (or another root reusing the data directory) never
/// fetches into, or scans, the old source's mirror.
fn mirror_path(mirror_dir: &Path, project_key: &str, slug: &str, clone_url: &str) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(clone_url.as_bytes());
    mirror_dir.join(safe_component(project_key)).join(format!(
        "{}-{}.git",
        safe_component(slug),
        hex::encode(&digest[..8])
    ))
}

async fn update_mirror(
    clone_url: &str,
    mirror: &Path,
    credentials: &[&Path],
    timeout: Duration,
) -> Result<(), TaskError> {
    let failed = |message: String| TaskError::Failed {
        message,
        retryable: true,
    };
    // A mirror whose origin is not this task's source (made by an older
    // version, or by hand) is not fetched: it is cloned again.
    if mirror.join("HEAD").exists()
        && git_output(mirror, &["config", "--get", "remote.origin.url"])
            .await
            .is_ok_and(|origin| origin != clone_url)
    {
        tracing::warn!(mirror = %mirror.display(), "the mirror's origin is another source: cloning again");
        tokio::fs::remove_dir_all(mirror)
            .await
            .map_err(|error| failed(format!("{}: {error}", mirror.display())))?;
    }
    if mirror.join("HEAD").exists() {
        git_output_within(
            mirror,
            &[
                "-c",
                "gc.auto=0",
                "fetch",
                "--quiet",
                "--prune",
                "--force",
                "origin",
                "+refs/heads/*:refs/heads/*",
            ],
            credentials,
            timeout,
        )
        .await
        .map_err(|message| failed(format!("fetch {clone_url}: {message}")))?;
        return Ok(());
    }
    let parent = mirror.parent().expect("a mirror path has a parent");
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|error| failed(format!("{}: {error}", parent.display())))?;
    // Clone beside the mirror and rename it into place, so that another
    // process sharing the directory never sees a half-made mirror and two
    // clones never write into one directory.
    let staging = parent.join(format!(
        ".{}.clone-{}",
        mirror
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        staging_suffix()
    ));
    let mut cleanup = Staging(Some(staging.clone()));
    let output = match run_git(
        tokio::process::Command::new("git")
            .args(["-c", "gc.auto=0", "clone", "--quiet", "--mirror", "--"])
            .arg(clone_url)
            .arg(&staging),
        credentials,
        timeout,
    )
    .await
    {
        Ok(output) => output,
        Err(message) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(failed(format!("clone {clone_url}: {message}")));
        }
    };
    if !output.status.success() {
        let _ = tokio::fs::remove_dir_all(&staging).await;
        return Err(failed(format!(
            "clone {clone_url}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    if let Err(error) = tokio::fs::rename(&staging, mirror).await {
        let _ = tokio::fs::remove_dir_all(&staging).await;
        // Someone else's clone got there first: use it.
        if !mirror.join("HEAD").exists() {
            return Err(failed(format!("{}: {error}", mirror.display())));
        }
    }
    cleanup.0 = None;
    Ok(())
}

/// `message` as a call that carries the current span's `traceparent`.
fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = leakscan_service::telemetry::current_traceparent()
        .and_then(|traceparent| traceparent.parse().ok())
    {
        request.metadata_mut().insert("traceparent", value);
    }
    request
}

/// Resolves once `progress` is cancelled (a flag the engine polls; this
/// looks every 50 ms).
async fn stopped(progress: &ScanProgress) {
    while !progress.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes a staging directory when dropped, unless it was renamed into
/// place (a clone stopped half-way leaves nothing behind).
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// A suffix unique to this process and call, for staging directories.
fn staging_suffix() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `ancestor` is a commit of `repository` that `head` descends from
/// (false when it is missing).
async fn is_ancestor(repository: &Path, ancestor: &str, head: &str) -> bool {
    // Both are object names this worker read with `rev-parse`; a value that
    // is not hex (an option) is no commit.
    ancestor.bytes().all(|byte| byte.is_ascii_hexdigit())
        && git_output(repository, &["merge-base", "--is-ancestor", ancestor, head])
            .await
            .is_ok()
}

/// Longest a git command may run, a first clone of a big repository
/// included: a stalled fetch would otherwise hold a slot, its lease and the
/// mirror's lock for ever.
const GIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs git without a terminal or stdin, within `timeout`. The process is
/// killed when the time is up, and when the future is dropped (the task was
/// cancelled or the worker stops).
async fn run_git(
    command: &mut tokio::process::Command,
    credentials: &[&Path],
    timeout: Duration,
) -> Result<std::process::Output, String> {
    leakscan_service::prepare_git(command, credentials)?;
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(output) => output.map_err(|error| format!("cannot run git: {error}")),
        Err(_) => Err(format!(
            "git did not finish within {} s and was stopped",
            timeout.as_secs()
        )),
    }
}

async fn git_output(repository: &Path, args: &[&str]) -> Result<String, String> {
    git_output_within(repository, args, &[], GIT_TIMEOUT).await
}

async fn git_output_within(
    repository: &Path,
    args: &[&str],
    credentials: &[&Path],
    timeout: Duration,
) -> Result<String, String> {
    let output = run_git(
        tokio::process::Command::new("git")
            .arg("-C")
            .arg(repository)
            .args(args),
        credentials,
        timeout,
    )
    .await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(secret_len: usize) -> Finding {
        Finding {
            rule_id: "RSA_PRIVATE_KEY".into(),
            path: "keys/deploy.pem".into(),
            secret: vec![b'k'; secret_len],
            ..Finding::default()
        }
    }

    /// Regression (issue 13): git commands had no timeout, so a fetch from a
    /// server that stops answering held the slot, the lease and the mirror's
    /// lock for ever. Now git is stopped, and nothing half-made is left.
    #[tokio::test]
    async fn a_stalled_clone_is_stopped_and_leaves_nothing() {
        let address = leakscan_testkit::silent_server();
        let mirrors = tempfile::tempdir().unwrap();
        let mirror = mirrors.path().join("P").join("r.git");
        let error = update_mirror(
            &format!("http://{address}/r.git"),
            &mirror,
            &[],
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        match error {
            TaskError::Failed { message, retryable } => {
                assert!(message.contains("did not finish"), "{message}");
                assert!(retryable);
            }
            other => panic!("{other:?}"),
        }
        assert!(!mirror.exists());
        let left: Vec<_> = std::fs::read_dir(mirrors.path().join("P"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Regression (issue 13): 500 findings of key files made a message over
    /// tonic's 4 MiB limit, refused every time, so the task never completed.
    #[test]
    fn findings_batches_stay_under_the_message_limit() {
        let findings: Vec<Finding> = (0..600).map(|_| finding(10_000)).collect();
        let batches = findings_batches(&findings, FINDINGS_BATCH, FINDINGS_BATCH_BYTES);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 600);
        for batch in &batches {
            let request = SendFindingsRequest {
                findings: batch.to_vec(),
                ..SendFindingsRequest::default()
            };
            assert!(prost::Message::encoded_len(&request) <= FINDINGS_BATCH_BYTES);
        }
        // Small findings still go 500 at a time; one huge finding goes alone.
        let small: Vec<Finding> = (0..1200).map(|_| finding(40)).collect();
        let counts: Vec<usize> = findings_batches(&small, FINDINGS_BATCH, FINDINGS_BATCH_BYTES)
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(counts, vec![500, 500, 200]);
        let huge = vec![finding(10), finding(2 << 20), finding(10)];
        let counts: Vec<usize> = findings_batches(&huge, FINDINGS_BATCH, FINDINGS_BATCH_BYTES)
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(counts, vec![1, 1, 1]);
        assert!(findings_batches(&[], FINDINGS_BATCH, FINDINGS_BATCH_BYTES).is_empty());
    }
}
