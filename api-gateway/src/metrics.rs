//! The gateway's `/metrics` (docs/ARCHITECTURE.md, "Operations"): requests
//! by method and status class, and what installed pre-receive hooks
//! reported. No repository, user or scan key labels.

use std::sync::Arc;

use axum::{extract::State, response::Response};
use leakscan_service::ops;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::AppState;

type Labels = Vec<(&'static str, String)>;

/// What the gateway counts.
#[derive(Default)]
pub struct GatewayMetrics {
    requests: Family<Labels, Counter>,
    hook_reports: Family<Labels, Counter>,
}

/// How the gateway answered a pre-receive hook's report of a push.
#[derive(Debug, Clone, Copy)]
pub enum HookResult {
    /// Secrets nobody reviewed: the hook blocks the push (warns, in warn mode).
    Open,
    /// Let through with a bypass reason (audited).
    Bypassed,
    /// Every secret found was reviewed already: let through.
    Reviewed,
    /// The scan ran past its budget: let through, branch scan queued.
    OverBudget,
}

impl GatewayMetrics {
    pub(crate) fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "leakscan_http_requests",
            "Requests answered, by method and status class (2xx, 4xx, ...)",
            self.requests.clone(),
        );
        registry.register(
            "leakscan_hook_reports",
            "Pushes with findings reported by pre-receive hooks, by result \
             (open, bypassed, reviewed, over_budget)",
            self.hook_reports.clone(),
        );
        registry
    }

    pub(crate) fn request(&self, method: &str, status: u16) {
        // Any token is a method: unknown ones share a label.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method,
            _ => "other",
        };
        self.requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("status", format!("{}xx", status / 100)),
            ])
            .inc();
    }

    pub(crate) fn hook_report(&self, result: HookResult) {
        let label = match result {
            HookResult::Open => "open",
            HookResult::Bypassed => "bypassed",
            HookResult::Reviewed => "reviewed",
            HookResult::OverBudget => "over_budget",
        };
        self.hook_reports
            .get_or_create(&vec![("result", label.to_string())])
            .inc();
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ops::metrics_response(&state.metrics_text).await
}
