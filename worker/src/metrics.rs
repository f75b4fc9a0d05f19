//! What a worker counts, for its `/metrics` (docs/ARCHITECTURE.md,
//! "Operations"), and what its `/health/ready` reads. No repository, user
//! or scan key labels: a worker's figures stay few whatever it scans.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// How a task ended on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    Completed,
    Failed,
    /// Stopped (the worker drains, the job was cancelled, the lease was
    /// lost) and given back to the coordinator.
    HandedBack,
}

impl TaskEnd {
    fn label(self) -> &'static str {
        match self {
            TaskEnd::Completed => "completed",
            TaskEnd::Failed => "failed",
            TaskEnd::HandedBack => "handed_back",
        }
    }
}

/// The worker's counters and state.
pub struct WorkerState {
    registered: AtomicBool,
    tasks_in_flight: Gauge,
    tasks_ended: Family<Vec<(&'static str, &'static str)>, Counter>,
    task_duration: Histogram,
    blobs_scanned: Counter,
    bytes_scanned: Counter,
    findings: Counter,
    /// 1 once draining: also what [`WorkerState::is_draining`] reads.
    draining: Gauge,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            registered: AtomicBool::new(false),
            tasks_in_flight: Gauge::default(),
            tasks_ended: Family::default(),
            task_duration: Histogram::new(leakscan_service::ops::duration_buckets()),
            blobs_scanned: Counter::default(),
            bytes_scanned: Counter::default(),
            findings: Counter::default(),
            draining: Gauge::default(),
        }
    }
}

impl WorkerState {
    /// The registry `/metrics` is written from (handles share the counters).
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "leakscan_worker_tasks_in_flight",
            "Tasks this worker is scanning now",
            self.tasks_in_flight.clone(),
        );
        registry.register(
            "leakscan_worker_tasks",
            "Tasks ended on this worker, by outcome (completed, failed, handed_back)",
            self.tasks_ended.clone(),
        );
        registry.register_with_unit(
            "leakscan_worker_task_duration",
            "Time from lease to the end of a task on this worker",
            Unit::Seconds,
            self.task_duration.clone(),
        );
        registry.register(
            "leakscan_worker_blobs_scanned",
            "Blobs scanned (or answered by the blob-result cache) in completed tasks",
            self.blobs_scanned.clone(),
        );
        registry.register_with_unit(
            "leakscan_worker_scanned",
            "Bytes of blobs scanned in completed tasks",
            Unit::Bytes,
            self.bytes_scanned.clone(),
        );
        registry.register(
            "leakscan_worker_findings",
            "Findings sent to the coordinator",
            self.findings.clone(),
        );
        registry.register(
            "leakscan_worker_draining",
            "1 once the worker was told to stop: it leases nothing more",
            self.draining.clone(),
        );
        registry
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get() == 1
    }

    pub(crate) fn set_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.set(1);
    }

    pub(crate) fn task_started(&self) {
        self.tasks_in_flight.inc();
    }

    pub(crate) fn task_ended(&self, end: TaskEnd, seconds: f64) {
        self.tasks_in_flight.dec();
        self.tasks_ended
            .get_or_create(&vec![("outcome", end.label())])
            .inc();
        self.task_duration.observe(seconds);
    }

    pub(crate) fn scanned(&self, blobs: u64, bytes: u64, findings: u64) {
        self.blobs_scanned.inc_by(blobs);
        self.bytes_scanned.inc_by(bytes);
        self.findings.inc_by(findings);
    }
}
