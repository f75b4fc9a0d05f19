//! `leakscan-coordinator`: one active leader among replicas (a PostgreSQL
//! advisory lock held on a dedicated connection; standbys wait for it).
//!
//! The leader
//! - expands jobs still queued in PostgreSQL at start-up (reconciliation: a
//!   job whose stream entry was lost still runs),
//! - consumes the Redis job stream, expanding each job into branch tasks
//!   before acknowledging its entry, and takes over entries a dead
//!   coordinator left unacknowledged,
//! - takes back expired leases (workers that died), and
//! - serves the worker protocol (`leakscan.v1.Coordinator`) over gRPC.
//!
//! [`run`] takes the listener, pool and queue, so a test can start a whole
//! coordinator on port 0 with a fresh database.

pub mod mail;
pub mod metrics;
pub use metrics::ops_router;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use leakscan_proto::auth::RequireToken;
use leakscan_proto::v1::{
    coordinator_server::{Coordinator, CoordinatorServer},
    BlobMatches, BlobResult, CompleteTaskRequest, CompleteTaskResponse, FailTaskRequest,
    FailTaskResponse, HeartbeatRequest, HeartbeatResponse, LeaseTaskRequest, LeaseTaskResponse,
    LookupBlobsRequest, LookupBlobsResponse, Progress, RegisterRequest, RegisterResponse,
    Repository, SendFindingsRequest, SendFindingsResponse, StoreBlobResultsRequest,
    StoreBlobResultsResponse, Task,
};
use leakscan_store::{
    blobs,
    findings::{self, NewFinding},
    jobs, policy,
    queue::JobQueue,
    secrets::SecretBox,
    tasks::{self, Parallelism, TaskId, TaskProgress},
    StoreError,
};
use prost::Message as _;
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn, Instrument as _};

/// Key of the advisory lock whose holder is the leader (public so that a
/// test can hold it and keep a coordinator standing by).
pub const LEADER_LOCK: i64 = 7_243_000;

/// How long a call may run beyond the longest LeaseTask long poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Once a replica stops serving (it leads at last, or stops leading), how
/// long its connections get to close before they are let go. A graceful
/// shutdown waits for every connection, and one that never closes (a TCP
/// probe holding its socket, a client stuck mid-handshake) would otherwise
/// keep a standby from ever leading, or a leader from ever handing over.
/// Workers retry what was cut short, on the next coordinator.
const STANDBY_GRACE: Duration = Duration::from_secs(2);
const HANDOVER_GRACE: Duration = Duration::from_secs(10);
/// HTTP/2 pings on idle connections, so a worker that vanished without
/// closing its connection is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: u32,
    /// Attempts per task before it fails.
    pub max_attempts: i32,
    pub parallelism: Parallelism,
    pub heartbeat_interval_ms: u32,
    /// Longest long poll of LeaseTask.
    pub max_lease_wait_ms: u32,
    /// This replica's consumer name in the stream's group.
    pub consumer_name: String,
    /// Stream entries unacknowledged this long are taken over.
    pub claim_idle_ms: u64,
    /// How often expired leases are looked for.
    pub expiry_interval: Duration,
    /// How often the leader expands jobs PostgreSQL has as queued whatever
    /// the stream says (an enqueue that failed, entries Redis lost).
    pub reconcile_interval: Duration,
    /// Blob size limit sent with each task.
    pub max_blob_size: u64,
    /// Findings of lower confidence are not reported (sent in each task's
    /// policy).
    pub min_confidence: leakscan_engine::Confidence,
    /// The credential every worker call must carry
    /// ([`leakscan_proto::auth`]); the default is a new random one.
    pub worker_token: String,
    /// How often the leader checks it still holds its lock.
    pub leader_check_interval: Duration,
    /// How often the leader looks for a due occurrence of the rescan
    /// schedule.
    pub schedule_interval: Duration,
    /// TLS for the worker protocol (plaintext without).
    pub tls: Option<CoordinatorTls>,
    /// SMTP for the summaries of jobs started with `email=` (none: they
    /// wait in the outbox).
    pub mail: Option<mail::MailConfig>,
}

/// TLS for the worker protocol: the coordinator's certificate chain and key
/// (PEM) and, for mutual TLS, the CA (PEM) whose certificates workers must
/// present; without it any TLS client is served (the worker token still
/// applies).
#[derive(Debug, Clone)]
pub struct CoordinatorTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl CoordinatorTls {
    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            lease_ms: 30_000,
            max_attempts: 3,
            parallelism: Parallelism {
                instance: 64,
                per_worker: 4,
            },
            heartbeat_interval_ms: 1_000,
            max_lease_wait_ms: 20_000,
            consumer_name: "coordinator".into(),
            claim_idle_ms: 60_000,
            expiry_interval: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(60),
            max_blob_size: 20 * 1024 * 1024,
            min_confidence: leakscan_engine::Confidence::Medium,
            worker_token: leakscan_proto::auth::generate_token(),
            leader_check_interval: Duration::from_secs(5),
            schedule_interval: Duration::from_secs(5),
            mail: None,
            tls: None,
        }
    }
}

/// What tests, health checks and `/metrics` can see of a running
/// coordinator.
#[derive(Default)]
pub struct CoordinatorState {
    leader: AtomicBool,
    leaderships: AtomicU64,
    jobs_expanded: AtomicU64,
    pub(crate) metrics: metrics::CoordinatorMetrics,
}

impl CoordinatorState {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// How many times this replica became leader.
    pub fn leaderships(&self) -> u64 {
        self.leaderships.load(Ordering::SeqCst)
    }

    pub fn jobs_expanded(&self) -> u64 {
        self.jobs_expanded.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    WorkerToken(#[from] leakscan_proto::auth::TokenError),
}

impl From<sqlx::Error> for CoordinatorError {
    fn from(error: sqlx::Error) -> Self {
        CoordinatorError::Store(StoreError::Database(error))
    }
}

/// Runs the coordinator until `shutdown`: waits to become leader, then
/// serves. A standby answers every call `UNAVAILABLE` (its readiness is
/// `state.is_leader()`).
/// A leader that loses its lock (its lock connection ended, e.g. when
/// PostgreSQL restarted) stops serving and stands by again, so there are
/// never two leaders for longer than `leader_check_interval`.
pub async fn run(
    config: CoordinatorConfig,
    pool: PgPool,
    queue: JobQueue,
    secrets: Arc<SecretBox>,
    listener: TcpListener,
    state: Arc<CoordinatorState>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let authenticate = RequireToken::new(&config.worker_token)?;
    let mut incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    loop {
        // Until it leads, the replica answers every call UNAVAILABLE.
        let standing_by = shutdown.child_token();
        let lock = {
            let standby = stand_by(
                &config,
                &mut incoming,
                authenticate.clone(),
                standing_by.clone(),
            );
            tokio::pin!(standby);
            tokio::select! {
                lock = become_leader(&pool, &shutdown) => {
                    standing_by.cancel();
                    match tokio::time::timeout(STANDBY_GRACE, &mut standby).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => warn!(%error, "the standby service stopped with an error"),
                        Err(_) => warn!("connections to the standby service still open: let go"),
                    }
                    lock?
                }
                served = &mut standby => {
                    // The listener failed: nothing more can be served.
                    served?;
                    return Ok(());
                }
            }
        };
        let Some(lock_connection) = lock else {
            return Ok(());
        };
        state.leader.store(true, Ordering::SeqCst);
        state.leaderships.fetch_add(1, Ordering::SeqCst);
        info!(consumer = %config.consumer_name, "became leader");
        let leading = shutdown.child_token();
        let watcher = tokio::spawn(watch_lock(
            lock_connection,
            config.leader_check_interval,
            leading.clone(),
        ));
        let served = lead(
            &config,
            &pool,
            &queue,
            &secrets,
            &mut incoming,
            &state,
            authenticate.clone(),
            leading.clone(),
        )
        .await;
        leading.cancel();
        state.leader.store(false, Ordering::SeqCst);
        let lock_connection = watcher.await.ok().flatten();
        if shutdown.is_cancelled() {
            if let Some(mut connection) = lock_connection {
                let _: Result<bool, _> = sqlx::query_scalar("select pg_advisory_unlock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut *connection)
                    .await;
            }
            return served;
        }
        // The lock is gone and so is the connection that held it.
        if let Err(error) = served {
            warn!(%error, "stopped leading after an error");
        }
        warn!(consumer = %config.consumer_name, "lost the leader lock: standing by");
    }
}

/// Waits for the leader lock; `None` when `shutdown` came first. The lock
/// lives as long as the returned connection: a leader that dies loses it.
async fn become_leader(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Result<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>, CoordinatorError> {
    loop {
        let attempt = async {
            let mut connection = pool.acquire().await?;
            let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut *connection)
                .await?;
            Ok::<_, sqlx::Error>(acquired.then_some(connection))
        };
        match attempt.await {
            Ok(Some(connection)) => return Ok(Some(connection)),
            Ok(None) => {}
            // PostgreSQL is away: keep trying (a leader that lost its lock
            // comes here while the database restarts).
            Err(error) if !shutdown.is_cancelled() => {
                warn!(%error, "cannot try the leader lock");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Checks every `interval` that `connection` still holds the leader lock;
/// cancels `leading` as soon as it does not (or cannot tell), and hands the
/// connection back when leading ends while it still holds the lock.
async fn watch_lock(
    mut connection: sqlx::pool::PoolConnection<sqlx::Postgres>,
    interval: Duration,
    leading: CancellationToken,
) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    loop {
        tokio::select! {
            () = leading.cancelled() => return Some(connection),
            () = tokio::time::sleep(interval) => {}
        }
        let held: Result<bool, _> = sqlx::query_scalar(
            "select exists(select 1 from pg_locks
                 where locktype = 'advisory' and granted and pid = pg_backend_pid()
                   and database = (select oid from pg_database where datname = current_database())
                   and classid = ($1 >> 32)::bigint::oid and objid = ($1 & 4294967295)::bigint::oid
                   and objsubid = 1)",
        )
        .bind(LEADER_LOCK)
        .fetch_one(&mut *connection)
        .await;
        match held {
            Ok(true) => {}
            Ok(false) => {
                warn!("the leader lock is no longer held");
                leading.cancel();
                return None;
            }
            Err(error) => {
                warn!(%error, "cannot check the leader lock");
                leading.cancel();
                // The connection is broken: close it, never reuse it.
                connection.close_on_drop();
                return None;
            }
        }
    }
}

/// What the leader does until `leading` is cancelled: reconcile, consume
/// the job stream, expire leases and serve the worker protocol.
#[allow(clippy::too_many_arguments)]
async fn lead(
    config: &CoordinatorConfig,
    pool: &PgPool,
    queue: &JobQueue,
    secrets: &Arc<SecretBox>,
    incoming: &mut tokio_stream::wrappers::TcpListenerStream,
    state: &Arc<CoordinatorState>,
    authenticate: RequireToken,
    leading: CancellationToken,
) -> Result<(), CoordinatorError> {
    let work_available = Arc::new(Notify::new());
    // Credentials left inside clone URLs registered before they were
    // refused there move out of the URLs (docs/ARCHITECTURE.md, "Clone
    // sources").
    let moved =
        leakscan_store::clone_credentials::move_out_of_urls(pool, secrets, "coordinator").await?;
    for entry in &moved {
        warn!(repository = %entry.repository, origin = %entry.origin,
            "moved a credential out of the repository's clone URL into encrypted storage");
    }
    reconcile(pool, state).await?;
    let background = CancellationToken::new();
    let consumer = tokio::spawn(consume_stream(
        config.clone(),
        pool.clone(),
        queue.clone(),
        Arc::clone(state),
        Arc::clone(&work_available),
        background.clone(),
    ));
    let expiry = tokio::spawn(expire_leases(
        config.clone(),
        pool.clone(),
        Arc::clone(state),
        Arc::clone(&work_available),
        background.clone(),
    ));
    let reconciler = tokio::spawn(reconcile_periodically(
        config.reconcile_interval,
        pool.clone(),
        Arc::clone(state),
        Arc::clone(&work_available),
        background.clone(),
    ));
    let mailer = config.mail.clone().map(|mail| {
        tokio::spawn(mail::deliver(
            mail,
            pool.clone(),
            Arc::clone(state),
            background.clone(),
        ))
    });
    let scheduler = tokio::spawn(run_schedule(
        config.schedule_interval,
        pool.clone(),
        queue.clone(),
        background.clone(),
    ));
    // A call that outlives its deadline is dropped: the longest legitimate
    // one is a LeaseTask long poll.
    let call_timeout = Duration::from_millis(u64::from(config.max_lease_wait_ms)) + CALL_TIMEOUT;
    let service = CoordinatorService {
        config: config.clone(),
        secrets: Arc::clone(secrets),
        pool: pool.clone(),
        workers: WorkerRegistry::new(MAX_REGISTERED_WORKERS, STALE_WORKER),
        work_available,
        state: Arc::clone(state),
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        server = server.tls_config(tls.server_config())?;
    }
    let serving = server
        .timeout(call_timeout)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(CoordinatorServer::with_interceptor(service, authenticate))
        .serve_with_incoming_shutdown(incoming, leading.cancelled());
    tokio::pin!(serving);
    let served = tokio::select! {
        served = &mut serving => served,
        () = async {
            leading.cancelled().await;
            tokio::time::sleep(HANDOVER_GRACE).await;
        } => {
            warn!("connections still open {} s after leading ended: let go", HANDOVER_GRACE.as_secs());
            Ok(())
        }
    };
    background.cancel();
    let _ = consumer.await;
    let _ = expiry.await;
    let _ = reconciler.await;
    let _ = scheduler.await;
    if let Some(mailer) = mailer {
        let _ = mailer.await;
    }
    Ok(served?)
}

/// Expands every job PostgreSQL still has as queued; returns how many.
async fn reconcile(pool: &PgPool, state: &CoordinatorState) -> Result<usize, StoreError> {
    let queued = jobs::queued_jobs(pool).await?;
    for &job in &queued {
        let tasks = jobs::expand_job(pool, job).await?;
        state.jobs_expanded.fetch_add(1, Ordering::SeqCst);
        info!(job = job.0, tasks, "reconciled queued job");
    }
    Ok(queued.len())
}

/// [`reconcile`] every `interval` while leading: a job whose stream entry
/// never came (the enqueue failed) or was lost (Redis flushed or restarted
/// without its data) is expanded all the same. Expanding is idempotent, so
/// a job the stream delivers too is expanded once.
async fn reconcile_periodically(
    interval: Duration,
    pool: PgPool,
    state: Arc<CoordinatorState>,
    work_available: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match reconcile(&pool, &state).await {
            Ok(0) => {}
            Ok(_) => work_available.notify_waiters(),
            Err(error) => warn!(%error, "cannot reconcile queued jobs"),
        }
    }
}

/// Starts the scheduled total rescan of each due occurrence while leading
/// (docs/ARCHITECTURE.md, "Schedules"): the occurrence's row makes it once
/// per occurrence whichever replica leads.
async fn run_schedule(interval: Duration, pool: PgPool, queue: JobQueue, stop: CancellationToken) {
    loop {
        match leakscan_store::schedules::fire_due(&pool, chrono::Utc::now()).await {
            Ok(leakscan_store::schedules::Fired::Started(occurrence, job)) => {
                info!(%occurrence, scan_key = %job.scan_key, "scheduled total rescan started");
                // The stream entry is a hint: reconciliation expands it
                // if Redis does not take it.
                if let Err(error) = queue.enqueue(job.id).await {
                    warn!(%error, scan_key = %job.scan_key, "scheduled job not put on the stream; reconciliation will run it");
                }
            }
            Ok(leakscan_store::schedules::Fired::Skipped(occurrence)) => {
                info!(%occurrence, "scheduled total rescan skipped: the previous one still runs");
            }
            Ok(leakscan_store::schedules::Fired::Nothing) => {}
            Err(error) => warn!(%error, "cannot check the rescan schedule"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn consume_stream(
    config: CoordinatorConfig,
    pool: PgPool,
    queue: JobQueue,
    state: Arc<CoordinatorState>,
    work_available: Arc<Notify>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let deliveries = match queue
            .claim_stale(&config.consumer_name, config.claim_idle_ms, 16)
            .await
        {
            Ok(stale) if !stale.is_empty() => Ok(stale),
            Ok(_) => tokio::select! {
                () = stop.cancelled() => return,
                read = queue.read(&config.consumer_name, 16, 1000) => read,
            },
            Err(error) => Err(error),
        };
        let deliveries = match deliveries {
            Ok(deliveries) => deliveries,
            Err(error) => {
                warn!(%error, "cannot read the job stream");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        for delivery in deliveries {
            let span = tracing::info_span!(
                "expand job",
                job = delivery.job.0,
                tasks = tracing::field::Empty
            );
            leakscan_service::telemetry::continue_trace(&span, delivery.traceparent.as_deref());
            // Acknowledge only once the tasks are in PostgreSQL.
            let expanded = jobs::expand_job(&pool, delivery.job)
                .instrument(span.clone())
                .await;
            if let Ok(tasks) = &expanded {
                span.record("tasks", tasks);
            }
            match expanded {
                Ok(tasks) => {
                    state.jobs_expanded.fetch_add(1, Ordering::SeqCst);
                    info!(job = delivery.job.0, tasks, "expanded job");
                    work_available.notify_waiters();
                    if let Err(error) = queue.ack(&delivery.entry_id).await {
                        warn!(%error, entry = %delivery.entry_id, "cannot acknowledge stream entry");
                    }
                }
                Err(StoreError::NotFound(what)) => {
                    warn!(entry = %delivery.entry_id, %what, "stream entry for an unknown job dropped");
                    let _ = queue.ack(&delivery.entry_id).await;
                }
                Err(error) => {
                    warn!(%error, job = delivery.job.0, "cannot expand job; it stays pending")
                }
            }
        }
    }
}

async fn expire_leases(
    config: CoordinatorConfig,
    pool: PgPool,
    state: Arc<CoordinatorState>,
    work_available: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.expiry_interval) => {}
        }
        match tasks::expire_leases(&pool, config.max_attempts).await {
            Ok(expired) if !expired.is_empty() => {
                for (task, outcome) in &expired {
                    warn!(task_id = task.0, ?outcome, "scan task lease expired");
                    state.metrics.lease_expirations.inc();
                    if *outcome == tasks::AfterFailure::Requeue {
                        state.metrics.retries.inc();
                    }
                }
                work_available.notify_waiters();
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "cannot expire leases"),
        }
    }
}

/// Most workers one leader keeps registered at once.
const MAX_REGISTERED_WORKERS: usize = 4096;
/// A registered worker not heard from this long (no lease, no heartbeat)
/// is forgotten: it restarted under a new id, or is gone.
const STALE_WORKER: Duration = Duration::from_secs(600);

/// The registered workers and their slots, bounded: a worker that
/// restarts registers under a new id, and without a bound a long-lived
/// leader would keep every id it ever gave out (issue 13: "Register
/// without bound").
struct WorkerRegistry {
    workers: Mutex<HashMap<String, (u32, std::time::Instant)>>,
    capacity: usize,
    stale_after: Duration,
}

impl WorkerRegistry {
    fn new(capacity: usize, stale_after: Duration) -> WorkerRegistry {
        WorkerRegistry {
            workers: Mutex::new(HashMap::new()),
            capacity,
            stale_after,
        }
    }

    /// Registers `id`; when full, forgets the workers not heard from for
    /// `stale_after` first, and refuses (RESOURCE_EXHAUSTED) if still full.
    fn register(&self, id: &str, slots: u32) -> Result<(), Status> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.len() >= self.capacity {
            workers.retain(|_, (_, seen)| seen.elapsed() < self.stale_after);
        }
        if workers.len() >= self.capacity {
            return Err(Status::resource_exhausted(format!(
                "{} workers are registered with this coordinator, the most it keeps",
                self.capacity
            )));
        }
        workers.insert(id.to_string(), (slots, std::time::Instant::now()));
        Ok(())
    }

    /// The slots of a registered worker, which is heard from now.
    fn slots(&self, id: &str) -> Option<u32> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.get_mut(id).map(|(slots, seen)| {
            *seen = std::time::Instant::now();
            *slots
        })
    }
}

struct CoordinatorService {
    config: CoordinatorConfig,
    secrets: Arc<SecretBox>,
    pool: PgPool,
    workers: WorkerRegistry,
    work_available: Arc<Notify>,
    state: Arc<CoordinatorState>,
}

fn status(error: StoreError) -> Status {
    match error {
        StoreError::Invalid(message) => Status::failed_precondition(message),
        StoreError::NotFound(message) => Status::not_found(message),
        other => {
            warn!(error = %other, "store error");
            Status::internal("internal error")
        }
    }
}

/// A span for a worker's call, continuing the trace its `traceparent`
/// metadata names (the worker's scan of the task).
fn traced_call<T>(name: &'static str, request: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!("call", otel.name = name, findings = tracing::field::Empty);
    leakscan_service::telemetry::continue_trace(
        &span,
        request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
    );
    span
}

fn task_progress(progress: Option<&Progress>) -> TaskProgress {
    let progress = progress.copied().unwrap_or_default();
    TaskProgress {
        commits_total: progress.commits_total as i64,
        commits_done: progress.commits_done as i64,
        blobs_read: progress.blobs_read as i64,
    }
}

/// What a standby serves: every call answers `UNAVAILABLE` at once, so a
/// worker given this replica's address moves on to the next one instead of
/// waiting for its call's deadline (docs/ARCHITECTURE.md, "Leadership").
struct StandbyService;

fn not_leading<T>() -> Result<Response<T>, Status> {
    Err(Status::unavailable(
        "this coordinator stands by: the leader is another replica",
    ))
}

#[tonic::async_trait]
impl Coordinator for StandbyService {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        not_leading()
    }
    async fn lease_task(
        &self,
        _: Request<LeaseTaskRequest>,
    ) -> Result<Response<LeaseTaskResponse>, Status> {
        not_leading()
    }
    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        not_leading()
    }
    async fn send_findings(
        &self,
        _: Request<SendFindingsRequest>,
    ) -> Result<Response<SendFindingsResponse>, Status> {
        not_leading()
    }
    async fn complete_task(
        &self,
        _: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        not_leading()
    }
    async fn fail_task(
        &self,
        _: Request<FailTaskRequest>,
    ) -> Result<Response<FailTaskResponse>, Status> {
        not_leading()
    }
    async fn lookup_blobs(
        &self,
        _: Request<LookupBlobsRequest>,
    ) -> Result<Response<LookupBlobsResponse>, Status> {
        not_leading()
    }
    async fn store_blob_results(
        &self,
        _: Request<StoreBlobResultsRequest>,
    ) -> Result<Response<StoreBlobResultsResponse>, Status> {
        not_leading()
    }
}

/// Serves [`StandbyService`] on `incoming` until `stop`.
async fn stand_by(
    config: &CoordinatorConfig,
    incoming: &mut tokio_stream::wrappers::TcpListenerStream,
    authenticate: RequireToken,
    stop: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        server = server.tls_config(tls.server_config())?;
    }
    Ok(server
        .add_service(CoordinatorServer::with_interceptor(
            StandbyService,
            authenticate,
        ))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await?)
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        if request.worker_name.trim().is_empty() || request.slots == 0 {
            return Err(Status::invalid_argument(
                "worker_name and a positive slots are required",
            ));
        }
        let worker_id = format!("{}-{}", request.worker_name, jobs::new_scan_key());
        self.workers.register(&worker_id, request.slots)?;
        info!(%worker_id, slots = request.slots, "worker registered");
        Ok(Response::new(RegisterResponse {
            worker_id,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        }))
    }

    async fn lease_task(
        &self,
        request: Request<LeaseTaskRequest>,
    ) -> Result<Response<LeaseTaskResponse>, Status> {
        let request = request.into_inner();
        if request.worker_id.is_empty() {
            return Err(Status::invalid_argument(
                "worker_id is required: register first",
            ));
        }
        // A worker registered with an earlier leader is unknown here; it
        // gets the configured per-worker limit rather than an error.
        let slots = self
            .workers
            .slots(&request.worker_id)
            .unwrap_or(self.config.parallelism.per_worker);
        let limits = Parallelism {
            instance: self.config.parallelism.instance,
            per_worker: self.config.parallelism.per_worker.min(slots),
        };
        let wait = Duration::from_millis(u64::from(
            request.wait_ms.min(self.config.max_lease_wait_ms),
        ));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a notification between the
            // look and the wait is not lost.
            let notified = self.work_available.notified();
            let leased = tasks::lease_next_task(
                &self.pool,
                &request.worker_id,
                self.config.lease_ms,
                limits,
            )
            .await
            .map_err(status)?;
            if let Some(leased) = leased {
                // The lease joins the trace of the job's request; the worker
                // continues it from the answer's metadata.
                let span = tracing::info_span!(
                    "lease task",
                    task_id = leased.task_id.0,
                    attempt = leased.attempts
                );
                leakscan_service::telemetry::continue_trace(&span, leased.traceparent.as_deref());
                let traceparent = span.in_scope(leakscan_service::telemetry::current_traceparent);
                info!(task_id = leased.task_id.0, worker = %request.worker_id, "scan task leased");
                let counted = &self.state.metrics;
                counted.leases.inc();
                if leased.attempts == 1 {
                    counted.queue_wait.observe(leased.queued_seconds);
                }
                let mut spec = policy::base_policy(&self.pool, leased.repository_id)
                    .await
                    .map_err(status)?;
                spec.min_confidence = self.config.min_confidence;
                let policy_json = serde_json::to_string(&spec)
                    .map_err(|error| Status::internal(format!("policy: {error}")))?;
                let clone_credential = leakscan_store::clone_credentials::git_line(
                    &self.pool,
                    &self.secrets,
                    leased.repository_id,
                    &leased.clone_url,
                )
                .await
                .map_err(status)?
                .unwrap_or_default();
                let mut response = Response::new(LeaseTaskResponse {
                    task: Some(Task {
                        task_id: leased.task_id.0.to_string(),
                        lease_id: leased.lease_id,
                        scan_key: leased.scan_key,
                        repository: Some(Repository {
                            project_key: leased.project_key,
                            slug: leased.slug,
                            clone_url: leased.clone_url,
                            clone_credential,
                        }),
                        branch: leased.branch,
                        last_scanned_commit: leased.last_scanned_commit.unwrap_or_default(),
                        base_digest: policy::base_digest(&spec),
                        policy_json,
                        last_scanned_digest: leased.last_scanned_digest.unwrap_or_default(),
                        max_blob_size: self.config.max_blob_size,
                        lease_ms: self.config.lease_ms,
                        attempt: leased.attempts as u32,
                    }),
                });
                if let Some(value) = traceparent.and_then(|value| value.parse().ok()) {
                    response.metadata_mut().insert("traceparent", value);
                }
                return Ok(response);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(LeaseTaskResponse { task: None }));
            }
            // Poll now and then too: tasks also free up when other workers
            // finish (no notification for that).
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(250)), notified)
                    .await;
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let request = request.into_inner();
        // A worker busy with a long task is still there.
        self.workers.slots(&request.worker_id);
        let task = parse_task_id(&request.task_id)?;
        let cancel = tasks::heartbeat(
            &self.pool,
            task,
            &request.lease_id,
            self.config.lease_ms,
            task_progress(request.progress.as_ref()),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(HeartbeatResponse { cancel }))
    }

    async fn send_findings(
        &self,
        request: Request<SendFindingsRequest>,
    ) -> Result<Response<SendFindingsResponse>, Status> {
        let span = traced_call("record findings", &request);
        let request = request.into_inner();
        span.record("findings", request.findings.len());
        let task = parse_task_id(&request.task_id)?;
        let batch: Vec<NewFinding> = request
            .findings
            .into_iter()
            .map(|finding| NewFinding {
                rule_id: finding.rule_id,
                rule_name: finding.rule_name,
                severity: finding.severity,
                commit: finding.commit,
                path: finding.path,
                line: (finding.line > 0).then_some(finding.line as i32),
                author: finding.author,
                author_email: finding.author_email,
                commit_date: chrono::DateTime::from_timestamp(finding.commit_time, 0),
                secret: finding.secret,
                confidence: finding
                    .confidence
                    .parse::<leakscan_engine::Confidence>()
                    .ok()
                    .map(|confidence| confidence.as_str().to_string()),
            })
            .collect();
        // The lease is checked in the transaction that writes.
        let recorded = findings::record_task_findings(
            &self.pool,
            &self.secrets,
            task,
            &request.lease_id,
            &batch,
        )
        .instrument(span)
        .await
        .map_err(status)?;
        self.state.metrics.findings.inc_by(recorded);
        Ok(Response::new(SendFindingsResponse { recorded }))
    }

    async fn complete_task(
        &self,
        request: Request<CompleteTaskRequest>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        let span = traced_call("complete task", &request);
        let request = request.into_inner();
        let task = parse_task_id(&request.task_id)?;
        let progress = request.progress.unwrap_or_default();
        let completion = tasks::Completion {
            blobs_read: task_progress(Some(&progress)).blobs_read,
            head_commit: request.head_commit,
            policy_digest: request.policy_digest,
            base_digest: request.base_digest,
            full_scan: request.full_scan,
        };
        let leased_ms = tasks::complete_task(&self.pool, task, &request.lease_id, &completion)
            .instrument(span)
            .await
            .map_err(status)?;
        let counted = &self.state.metrics;
        counted.task_duration.observe(leased_ms as f64 / 1000.0);
        counted.blobs_scanned.inc_by(progress.blobs_done);
        counted.bytes_scanned.inc_by(progress.bytes_scanned);
        self.work_available.notify_waiters();
        Ok(Response::new(CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        request: Request<FailTaskRequest>,
    ) -> Result<Response<FailTaskResponse>, Status> {
        let request = request.into_inner();
        let task = parse_task_id(&request.task_id)?;
        let outcome = tasks::fail_task(
            &self.pool,
            task,
            &request.lease_id,
            &request.error,
            request.retryable,
            self.config.max_attempts,
        )
        .await
        .map_err(status)?;
        warn!(task_id = task.0, ?outcome, "scan task attempt failed");
        if outcome == tasks::AfterFailure::Requeue {
            self.state.metrics.retries.inc();
        }
        self.work_available.notify_waiters();
        Ok(Response::new(FailTaskResponse {}))
    }

    async fn lookup_blobs(
        &self,
        request: Request<LookupBlobsRequest>,
    ) -> Result<Response<LookupBlobsResponse>, Status> {
        let request = request.into_inner();
        let task = parse_task_id(&request.task_id)?;
        check_blob_count(request.blob_ids.len())?;
        tasks::leased_task_target(&self.pool, task, &request.lease_id)
            .await
            .map_err(status)?;
        let known = blobs::lookup(
            &self.pool,
            &self.secrets,
            &request.ruleset_digest,
            &request.blob_ids,
        )
        .await
        .map_err(status)?;
        let mut results = Vec::with_capacity(known.len());
        for (blob_id, result) in request.blob_ids.into_iter().zip(known) {
            let (known, matches) = match result {
                None => (false, Vec::new()),
                Some(None) => (true, Vec::new()),
                Some(Some(payload)) => match BlobMatches::decode(payload.as_slice()) {
                    Ok(decoded) => (true, decoded.matches),
                    Err(error) => {
                        warn!(%error, "unreadable cached blob result; the blob is read again");
                        (false, Vec::new())
                    }
                },
            };
            results.push(BlobResult {
                blob_id,
                known,
                matches,
            });
        }
        Ok(Response::new(LookupBlobsResponse { results }))
    }

    async fn store_blob_results(
        &self,
        request: Request<StoreBlobResultsRequest>,
    ) -> Result<Response<StoreBlobResultsResponse>, Status> {
        let request = request.into_inner();
        let task = parse_task_id(&request.task_id)?;
        check_blob_count(request.results.len())?;
        tasks::leased_task_target(&self.pool, task, &request.lease_id)
            .await
            .map_err(status)?;
        let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = request
            .results
            .into_iter()
            .map(|result| {
                let payload = (!result.matches.is_empty()).then(|| {
                    BlobMatches {
                        matches: result.matches,
                    }
                    .encode_to_vec()
                });
                (result.blob_id, payload)
            })
            .collect();
        blobs::store(&self.pool, &self.secrets, &request.ruleset_digest, &entries)
            .await
            .map_err(status)?;
        Ok(Response::new(StoreBlobResultsResponse {}))
    }
}

/// At most this many blobs per cache call (a worker splits larger sets).
fn check_blob_count(count: usize) -> Result<(), Status> {
    if count > blobs::MAX_BLOBS_PER_CALL {
        Err(Status::invalid_argument(format!(
            "at most {} blobs per call",
            blobs::MAX_BLOBS_PER_CALL
        )))
    } else {
        Ok(())
    }
}

fn parse_task_id(text: &str) -> Result<TaskId, Status> {
    text.parse::<i64>()
        .map(TaskId)
        .map_err(|_| Status::invalid_argument(format!("invalid task_id {text:?}")))
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn registrations_are_bounded_and_stale_workers_make_room() {
        let registry = WorkerRegistry::new(2, Duration::from_millis(500));
        registry.register("a", 1).unwrap();
        registry.register("b", 2).unwrap();
        // Full, and nobody stale yet: refused.
        let refused = registry.register("c", 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(registry.slots("b"), Some(2));
        std::thread::sleep(Duration::from_millis(700));
        // "b" is heard from again; "a" is not, and makes room.
        assert_eq!(registry.slots("b"), Some(2));
        registry.register("c", 3).unwrap();
        assert_eq!(registry.slots("a"), None);
        assert_eq!(registry.slots("c"), Some(3));
        assert_eq!(registry.slots("b"), Some(2));
    }
}
