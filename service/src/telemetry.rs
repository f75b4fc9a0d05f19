//! Traces (docs/ARCHITECTURE.md, "Traces"): OpenTelemetry spans exported
//! with OTLP over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by the standard
//! `OTEL_*` variables; off otherwise. A trace crosses processes as a W3C
//! `traceparent`: in the Redis stream entry of a job, in the job's row (for
//! the lease, which comes later), and in gRPC metadata. Spans carry ids,
//! states and counts, never a secret.

use std::collections::HashMap;

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Whether the standard variables ask for an OTLP exporter.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
        && std::env::var("OTEL_SDK_DISABLED").as_deref() != Ok("true")
}

/// Sets up logging (as [`crate::init_logging`]) and, when configured, the
/// OTLP trace exporter for `service` (the `service.name`, unless
/// `OTEL_SERVICE_NAME` says otherwise). Keep the guard until the end.
pub fn init(service: &'static str) -> Telemetry {
    install_propagator();
    let provider = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build(),
            ),
            Err(error) => {
                eprintln!("leakscan: traces are not exported: {error}");
                None
            }
        }
    } else {
        None
    };
    let layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(tracing_subscriber::filter::filter_fn(is_ours))
            .boxed()
    });
    crate::init_subscriber(layer);
    Telemetry(provider)
}

/// Only leakscan's own spans are exported (not those of the libraries
/// under it: HTTP/2 frames, pool checkouts).
pub fn is_ours(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target().starts_with("leakscan") && *metadata.level() <= tracing::Level::INFO
}

/// W3C trace context in and out of carriers (idempotent).
pub fn install_propagator() {
    global::set_text_map_propagator(TraceContextPropagator::new());
}

/// The `traceparent` of the current span, when it is traced.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace `traceparent` names (nothing when it
/// is absent or malformed).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|value| value.len() <= 128) else {
        return;
    };
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(context);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_or_missing_traceparent_is_ignored() {
        install_propagator();
        let span = tracing::info_span!("test");
        continue_trace(&span, None);
        continue_trace(&span, Some("not a traceparent"));
        continue_trace(&span, Some(&"0".repeat(500)));
        // No subscriber traces here: nothing to carry on.
        assert_eq!(current_traceparent(), None);
    }
}
