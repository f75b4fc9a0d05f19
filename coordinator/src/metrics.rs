//! The coordinator's `/metrics`, `/health/ready` and `/scaling`
//! (docs/ARCHITECTURE.md, "Operations"). Counters count what this replica
//! did while it led; the figures by state are read from PostgreSQL and
//! Redis at each scrape, so every replica reports the same ones. No
//! repository, user or scan key labels.

use std::sync::{atomic::AtomicU64, Arc};

use axum::{extract::State, routing::get, Json, Router};
use leakscan_service::ops;
use leakscan_store::{queue::JobQueue, tasks};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use serde_json::json;
use sqlx::PgPool;

use crate::CoordinatorState;

type Labels = Vec<(&'static str, String)>;

/// What the coordinator counts.
pub struct CoordinatorMetrics {
    pub(crate) leases: Counter,
    pub(crate) lease_expirations: Counter,
    pub(crate) retries: Counter,
    pub(crate) queue_wait: Histogram,
    pub(crate) task_duration: Histogram,
    pub(crate) blobs_scanned: Counter,
    pub(crate) bytes_scanned: Counter,
    pub(crate) findings: Counter,
    pub(crate) emails: Family<Labels, Counter>,
    leader: Gauge,
    jobs: Family<Labels, Gauge>,
    tasks: Family<Labels, Gauge>,
    tasks_pending: Gauge,
    tasks_in_flight: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    oldest_leased: Gauge<f64, AtomicU64>,
    stream_lag: Gauge,
    stream_pending: Gauge,
    scrape_errors: Counter,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        CoordinatorMetrics {
            leases: Counter::default(),
            lease_expirations: Counter::default(),
            retries: Counter::default(),
            queue_wait: Histogram::new(ops::duration_buckets()),
            task_duration: Histogram::new(ops::duration_buckets()),
            blobs_scanned: Counter::default(),
            bytes_scanned: Counter::default(),
            findings: Counter::default(),
            emails: Family::default(),
            leader: Gauge::default(),
            jobs: Family::default(),
            tasks: Family::default(),
            tasks_pending: Gauge::default(),
            tasks_in_flight: Gauge::default(),
            oldest_pending: Gauge::default(),
            oldest_leased: Gauge::default(),
            stream_lag: Gauge::default(),
            stream_pending: Gauge::default(),
            scrape_errors: Counter::default(),
        }
    }
}

impl CoordinatorMetrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "leakscan_coordinator_leader",
            "1 while this replica leads",
            self.leader.clone(),
        );
        r.register("leakscan_jobs", "Scan jobs by state", self.jobs.clone());
        r.register(
            "leakscan_tasks",
            "Branch tasks by state",
            self.tasks.clone(),
        );
        r.register(
            "leakscan_tasks_pending",
            "Queued tasks of running jobs: what workers could take now",
            self.tasks_pending.clone(),
        );
        r.register(
            "leakscan_tasks_in_flight",
            "Tasks leased to workers now",
            self.tasks_in_flight.clone(),
        );
        r.register_with_unit(
            "leakscan_oldest_pending_task_age",
            "Age of the oldest pending task (0 when none)",
            Unit::Seconds,
            self.oldest_pending.clone(),
        );
        r.register_with_unit(
            "leakscan_oldest_leased_task_age",
            "Time since the oldest running task was leased (0 when none)",
            Unit::Seconds,
            self.oldest_leased.clone(),
        );
        r.register(
            "leakscan_task_leases",
            "Tasks leased to workers",
            self.leases.clone(),
        );
        r.register(
            "leakscan_task_lease_expirations",
            "Leases that expired without a heartbeat",
            self.lease_expirations.clone(),
        );
        r.register(
            "leakscan_task_retries",
            "Failed or expired attempts put back in the queue",
            self.retries.clone(),
        );
        r.register_with_unit(
            "leakscan_task_queue_wait",
            "Time from a task's creation to its first lease",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        r.register_with_unit(
            "leakscan_task_duration",
            "Time from lease to completion of completed tasks",
            Unit::Seconds,
            self.task_duration.clone(),
        );
        r.register(
            "leakscan_blobs_scanned",
            "Blobs scanned by completed tasks",
            self.blobs_scanned.clone(),
        );
        r.register_with_unit(
            "leakscan_scanned",
            "Bytes of blobs scanned by completed tasks",
            Unit::Bytes,
            self.bytes_scanned.clone(),
        );
        r.register(
            "leakscan_findings_recorded",
            "Findings workers sent and the store kept",
            self.findings.clone(),
        );
        r.register(
            "leakscan_emails",
            "Job summary e-mails by result (sent, failed)",
            self.emails.clone(),
        );
        r.register(
            "leakscan_stream_lag",
            "Job stream entries no coordinator has read yet",
            self.stream_lag.clone(),
        );
        r.register(
            "leakscan_stream_pending",
            "Job stream entries read but not yet acknowledged",
            self.stream_pending.clone(),
        );
        r.register(
            "leakscan_metrics_scrape_errors",
            "Scrapes whose figures from PostgreSQL or Redis could not be read",
            self.scrape_errors.clone(),
        );
        r
    }

    /// Brings the figures read from PostgreSQL and Redis up to date.
    async fn refresh(&self, state: &CoordinatorState, pool: &PgPool, queue: &JobQueue) {
        self.leader.set(i64::from(state.is_leader()));
        match tasks::overview(pool).await {
            Ok(overview) => {
                self.jobs.clear();
                for (job_state, count) in overview.jobs {
                    self.jobs
                        .get_or_create(&vec![("state", job_state)])
                        .set(count);
                }
                self.tasks.clear();
                for (task_state, count) in overview.tasks {
                    self.tasks
                        .get_or_create(&vec![("state", task_state)])
                        .set(count);
                }
                let load = overview.load;
                self.tasks_pending.set(load.tasks_pending);
                self.tasks_in_flight.set(load.tasks_leased);
                self.oldest_pending.set(load.oldest_pending_seconds);
                self.oldest_leased.set(load.oldest_leased_seconds);
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot read jobs and tasks");
                self.scrape_errors.inc();
            }
        }
        match queue.stream_stats().await {
            Ok((lag, pending)) => {
                self.stream_lag.set(lag as i64);
                self.stream_pending.set(pending as i64);
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot read the job stream");
                self.scrape_errors.inc();
            }
        }
    }
}

#[derive(Clone)]
struct Scaling {
    pool: PgPool,
}

/// `GET /scaling`: `{"tasksPending": N, "tasksLeased": M}` for autoscalers
/// (KEDA's metrics-api trigger reads `tasksPending`).
async fn scaling(
    State(scaling): State<Scaling>,
) -> Result<Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let load = tasks::load(&scaling.pool).await.map_err(|error| {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the tasks: {error}"),
        )
    })?;
    Ok(Json(json!({
        "tasksPending": load.tasks_pending,
        "tasksLeased": load.tasks_leased,
    })))
}

/// The coordinator's operations endpoints. Ready means leading with
/// PostgreSQL and Redis answering: a Kubernetes Service in front of the
/// replicas then sends workers to the leader only (a standby answers 503
/// `{"role": "standby"}`).
pub fn ops_router(state: Arc<CoordinatorState>, pool: PgPool, queue: JobQueue) -> Router {
    let ready: ops::ReadyCheck = {
        let (state, pool, queue) = (Arc::clone(&state), pool.clone(), queue.clone());
        Arc::new(move || {
            let (state, pool, queue) = (Arc::clone(&state), pool.clone(), queue.clone());
            Box::pin(async move {
                let leader = state.is_leader();
                let postgres = sqlx::query_scalar::<_, i32>("select 1")
                    .fetch_one(&pool)
                    .await
                    .is_ok();
                let redis = queue.ping().await.is_ok();
                (
                    leader && postgres && redis,
                    json!({
                        "role": if leader { "leader" } else { "standby" },
                        "postgres": postgres,
                        "redis": redis,
                    }),
                )
            })
        })
    };
    let registry = state.metrics.registry();
    let scaling_routes = Router::new()
        .route("/scaling", get(scaling))
        .with_state(Scaling { pool: pool.clone() });
    let refresh: ops::Refresh = {
        let state = Arc::clone(&state);
        Arc::new(move || {
            let (state, pool, queue) = (Arc::clone(&state), pool.clone(), queue.clone());
            Box::pin(async move { state.metrics.refresh(&state, &pool, &queue).await })
        })
    };
    ops::router(
        ready,
        ops::Metrics::new(registry, "coordinator", Some(refresh)),
        scaling_routes,
    )
}
