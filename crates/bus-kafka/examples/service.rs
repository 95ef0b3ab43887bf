//! A service on the bus as it runs in production: configuration from a JSON file with the
//! environment overriding it, logs as JSON lines when stdout is not a terminal, a health and
//! metrics endpoint, and a stop on SIGTERM or Ctrl-C with a shutdown against a deadline whose
//! report becomes the exit code.
//!
//! It bills orders: it subscribes to `OrderPlaced` envelopes on the orders topic (group
//! `billing`) and publishes an `OrderBilled` envelope for each to the billed topic, in order per
//! customer (the envelope's aggregate). For a demonstration without an upstream service it can
//! place orders itself (`demo_orders_every`).
//!
//! ```sh
//! cargo xtask broker start
//! set -a; . target/broker.env; set +a
//! SERVICE_DEMO_ORDERS_EVERY=100ms cargo run -p bus-kafka --example service
//! curl -s http://127.0.0.1:8080/health; curl -s http://127.0.0.1:8080/metrics | grep '^bus_'
//! # Ctrl-C (or `kill -TERM`): it drains, commits, leaves its group, flushes and exits
//! ```
//!
//! The configuration file is the first argument or `SERVICE_CONFIG`; every field is optional:
//!
//! ```json
//! { "kafka": { "bootstrap": ["127.0.0.1:9092"], "producer": { "linger": "5ms" } },
//!   "orders_topic": "orders", "billed_topic": "orders.billed", "group": "billing",
//!   "http": "127.0.0.1:8080", "shutdown_timeout": "20s", "demo_orders_every": null }
//! ```
//!
//! `kafka` is [`KafkaConfig`] (librdkafka's names where they exist; see its documentation).
//! The environment overrides the file: `KAFKA_BOOTSTRAP` (comma-separated), `SERVICE_ORDERS_TOPIC`,
//! `SERVICE_BILLED_TOPIC`, `SERVICE_GROUP`, `SERVICE_HTTP`, `SERVICE_SHUTDOWN_TIMEOUT` and
//! `SERVICE_DEMO_ORDERS_EVERY` (durations as `20s`, `100ms`).
//!
//! `GET /health` answers 200 while the bus is `Ready` or `Degraded` (serving, with trouble being
//! retried) and 503 once it is `Unhealthy` or closed, with the health report as text; `GET
//! /metrics` is the Prometheus text of the bus's metrics (docs/OPERATIONS.md describes each).
//!
//! Exit status: 0 after a clean shutdown (every task stopped, nothing abandoned, nothing failed
//! back); 1 when it cannot start; 2 when the shutdown was not clean (the report says what).
//! Records fetched and not handled by the stop are left uncommitted: the group's next member
//! handles them. `cargo xtask test` runs it against the test cluster, stops it with SIGTERM
//! while orders flow, and checks all of that.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bus_kafka::health::Health;
use bus_kafka::supervisor::{Scope, Supervisor};
use bus_kafka::{Envelope, EventBus, HandlerError, KafkaConfig, SubscribeOptions};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The service's configuration: the file, then the environment.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServiceConfig {
    /// The bus's Kafka configuration.
    kafka: KafkaConfig,
    /// Where orders are placed.
    orders_topic: String,
    /// Where billed orders are published.
    billed_topic: String,
    /// The consumer group billing the orders.
    group: String,
    /// Where `/health` and `/metrics` are served.
    http: SocketAddr,
    /// The deadline of the shutdown after SIGTERM.
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration,
    /// Place a demonstration order this often (none: orders come from elsewhere).
    #[serde(with = "humantime_serde")]
    demo_orders_every: Option<Duration>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            kafka: KafkaConfig::default(),
            orders_topic: "orders".into(),
            billed_topic: "orders.billed".into(),
            group: "billing".into(),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_timeout: Duration::from_secs(20),
            demo_orders_every: None,
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

impl ServiceConfig {
    /// The file named by the first argument or `SERVICE_CONFIG` (the defaults when neither),
    /// then the environment's overrides.
    fn load() -> Result<ServiceConfig, Error> {
        let path = std::env::args().nth(1).or_else(|| std::env::var("SERVICE_CONFIG").ok());
        let mut config: ServiceConfig = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the configuration `{path}`: {e}"))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("the configuration `{path}` is not valid: {e}"))?
            }
            None => ServiceConfig::default(),
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let duration = |name: &str, text: String| {
            humantime::parse_duration(&text).map_err(|e| format!("{name}=`{text}`: {e}"))
        };
        if let Some(bootstrap) = var("KAFKA_BOOTSTRAP") {
            config.kafka.bootstrap = bootstrap.split(',').map(|b| b.trim().to_owned()).collect();
        }
        if let Some(topic) = var("SERVICE_ORDERS_TOPIC") {
            config.orders_topic = topic;
        }
        if let Some(topic) = var("SERVICE_BILLED_TOPIC") {
            config.billed_topic = topic;
        }
        if let Some(group) = var("SERVICE_GROUP") {
            config.group = group;
        }
        if let Some(http) = var("SERVICE_HTTP") {
            config.http = http.parse().map_err(|e| format!("SERVICE_HTTP=`{http}`: {e}"))?;
        }
        if let Some(text) = var("SERVICE_SHUTDOWN_TIMEOUT") {
            config.shutdown_timeout = duration("SERVICE_SHUTDOWN_TIMEOUT", text)?;
        }
        if let Some(text) = var("SERVICE_DEMO_ORDERS_EVERY") {
            config.demo_orders_every = Some(duration("SERVICE_DEMO_ORDERS_EVERY", text)?);
        }
        if config.kafka.bootstrap.is_empty() {
            return Err("no brokers: set `kafka.bootstrap` in the file or KAFKA_BOOTSTRAP".into());
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let logs = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO);
    if std::io::stdout().is_terminal() {
        logs.init();
    } else {
        logs.json().flatten_event(true).with_current_span(false).init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(service())
}

async fn service() -> ExitCode {
    // The stop signals first: one that comes while the service starts stops it once started,
    // instead of killing it on the spot (the default action).
    let stop = match StopSignals::install() {
        Ok(stop) => stop,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM and SIGINT");
            return ExitCode::from(1);
        }
    };
    let config = match ServiceConfig::load() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::from(1);
        }
    };
    // The service's own tasks (the HTTP endpoint, the demonstration orders) live in a
    // supervised tree of their own, as the bus's do: shut down and accounted for the same way.
    let tasks = Supervisor::new("service");
    let bus = match start(&config, tasks.root()).await {
        Ok(bus) => bus,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            let _ = tasks.shutdown(Duration::from_secs(5)).await;
            return ExitCode::from(1);
        }
    };
    let signal = stop.wait().await;
    tracing::info!(%signal, deadline = ?config.shutdown_timeout, "stopping");
    // The service's tasks first (no new orders, the endpoint closes), then the bus: handlers
    // drain, offsets are committed, the group is left, published records are flushed.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let own = tasks.shutdown(config.shutdown_timeout / 4).await;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let report = bus.shutdown(left).await;
    let clean = match (&own, &report) {
        (Ok(_), Ok(report)) => {
            let clean = report.failed == 0 && report.handlers_abandoned == 0;
            tracing::info!(
                clean,
                elapsed_ms = report.elapsed.as_millis() as u64,
                flushed = report.flushed,
                failed = report.failed,
                handlers_abandoned = report.handlers_abandoned,
                left_for_redelivery = report.discarded,
                live_tasks = bus.live_tasks(),
                "shut down"
            );
            clean
        }
        (own, bus_report) => {
            if let Err(error) = own {
                tracing::error!(%error, "the service's own tasks would not stop");
            }
            if let Err(error) = bus_report {
                tracing::error!(%error, "the bus would not stop");
            }
            false
        }
    };
    if clean { ExitCode::SUCCESS } else { ExitCode::from(2) }
}

/// Connects, subscribes, and starts the service's own tasks in `scope`.
async fn start(config: &ServiceConfig, scope: &Scope) -> Result<EventBus, Error> {
    // The recorder before the bus: the bus registers its metrics as its parts start.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let bus = bus_kafka::connect(config.kafka.clone()).await?;
    let billed_topic = config.billed_topic.clone();
    let publisher = bus.clone();
    let options = SubscribeOptions::new(config.group.clone());
    // Detached: it consumes until the bus shuts down, which drains and commits it.
    let _billing = bus
        .subscribe_envelopes(&config.orders_topic, options, move |order: Envelope| {
            let (bus, billed_topic) = (publisher.clone(), billed_topic.clone());
            async move { bill(&bus, &billed_topic, order).await }
        })
        .await?;
    let listener = TcpListener::bind(config.http).await?;
    tracing::info!(
        http = %config.http, orders = %config.orders_topic, billed = %config.billed_topic,
        group = %config.group, "serving"
    );
    // Detached tasks stay supervised: the supervisor's shutdown cancels and joins them.
    let http = scope.child("http");
    drop(scope.spawn("http", serve(listener, bus.clone(), metrics, http))?);
    if let Some(every) = config.demo_orders_every {
        let orders = place_orders(bus.clone(), config.orders_topic.clone(), every, scope.clone());
        drop(scope.spawn("demo-orders", orders)?);
    }
    Ok(bus)
}

/// Bills one order: publishes its `OrderBilled` (acknowledged before the order counts as handled,
/// so a crash in between bills it again rather than never).
async fn bill(bus: &EventBus, billed_topic: &str, order: Envelope) -> Result<(), HandlerError> {
    let total: serde_json::Value = order.payload_as()?;
    let billed = Envelope::new(
        &order.aggregate_id,
        "OrderBilled",
        order.event_version,
        serde_json::json!({ "order": order.event_id, "total": total["total"] }),
    )?;
    bus.publish_envelope(billed_topic, &billed)
        .await
        .map_err(|e| HandlerError::new(format!("publishing the bill: {e}")))?;
    tracing::info!(event_id = %order.event_id, customer = %order.aggregate_id, "order billed");
    Ok(())
}

/// SIGTERM (an orchestrator's stop) and SIGINT (Ctrl-C), listened for from the start.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The first of them to come (or to have come already).
    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Serves `/health` and `/metrics` until `scope` is cancelled, each connection a task of
/// `scope`, closed at the cancellation.
async fn serve(listener: TcpListener, bus: EventBus, metrics: PrometheusHandle, scope: Scope) {
    let token = scope.token();
    loop {
        let stream = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    continue;
                }
            },
        };
        let (bus, metrics, token) = (bus.clone(), metrics.clone(), token.clone());
        let respond = service_fn(move |request| {
            let response = respond(&request, &bus, &metrics);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let connection = async move {
            let served = http1::Builder::new().serve_connection(TokioIo::new(stream), respond);
            tokio::select! {
                () = token.cancelled() => {}
                _ = served => {}
            }
        };
        if let Err(error) = scope.spawn("connection", connection) {
            tracing::warn!(%error, "cannot serve an HTTP connection");
        }
    }
}

fn respond<B>(
    request: &Request<B>,
    bus: &EventBus,
    metrics: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    let (status, body) = match request.uri().path() {
        "/health" => {
            let report = bus.health_report();
            let status = match report.health {
                Health::Ready | Health::Degraded { .. } => StatusCode::OK,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, format!("{report:#?}\n"))
        }
        "/metrics" => (StatusCode::OK, metrics.render()),
        _ => (StatusCode::NOT_FOUND, "not found: try /health or /metrics\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Places an order every `every` until `scope` is cancelled, over five customers, each
/// customer's orders numbered 1, 2, 3, … (the envelope's version).
async fn place_orders(bus: EventBus, topic: String, every: Duration, scope: Scope) {
    let token = scope.token();
    let mut tick = tokio::time::interval(every);
    for n in 0u64.. {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let customer = format!("customer-{}", n % 5);
        let version = i64::try_from(n / 5 + 1).unwrap_or(i64::MAX);
        let total = 10 + n % 90;
        let placed = async {
            let order = Envelope::new(
                &customer,
                "OrderPlaced",
                version,
                serde_json::json!({ "total": total }),
            )?;
            bus.publish_envelope(&topic, &order).await?;
            Ok::<_, Error>(order.event_id)
        };
        tokio::select! {
            () = token.cancelled() => return,
            placed = placed => match placed {
                Ok(event_id) => tracing::info!(%event_id, %customer, "order placed"),
                Err(error) => tracing::warn!(%error, "placing an order failed"),
            },
        }
    }
}
