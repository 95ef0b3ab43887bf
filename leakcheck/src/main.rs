//! `leakcheck`: proves that the bus leaves nothing behind (run it with `cargo xtask leakcheck`).
//!
//! For each scenario it reads the process before (tokio's alive tasks, open descriptors,
//! threads), runs the scenario (which shuts its bus down, or drops it), and requires every
//! reading to return to its baseline within a short deadline, the bus's own live count to be
//! zero, and no message lost or out of order. On failure it names what leaked: task paths and
//! spawn sites, descriptor kinds, thread names. Progress while it runs, a summary table at the
//! end, the same as JSON (`--json`), and a non-zero exit status on any leak, loss or order
//! violation.
//!
//! `--inject-leak` leaves a task holding a socket behind in the first scenario: the tool must
//! then fail and name both (its own test checks this).

mod probe;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bus_core::EventBus;
use bus_kafka::KafkaConfig;
use clap::Parser;
use comfy_table::{Cell, Table};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use probe::{Leak, Probe, settle};
use scenario::{Ctx, Run, Scenario};
use serde::Serialize;

/// How long readings may take to return to their baseline after a scenario.
const SETTLE: Duration = Duration::from_secs(5);

/// Command line.
#[derive(Parser)]
#[command(name = "leakcheck", about = "Proves that the event bus leaves nothing behind.")]
struct Args {
    /// Scenarios to run (default: all; those needing Kafka need a broker).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// The Kafka broker (`host:port`); defaults to `KAFKA_BOOTSTRAP`.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Message counts of the load scenarios.
    #[arg(long, value_delimiter = ',', default_value = "500,2000,5000,10000")]
    counts: Vec<u64>,
    /// Leave a task holding a socket behind, to prove the check catches it.
    #[arg(long)]
    inject_leak: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/leakcheck.json")]
    json: PathBuf,
}

/// One row of the summary.
#[derive(Serialize)]
struct Row {
    run: Run,
    before: Counts,
    after: Counts,
    leaked: Leak,
    leaked_tasks: Vec<String>,
    pass: bool,
}

#[derive(Serialize)]
struct Counts {
    runtime_tasks: usize,
    fds: usize,
    threads: usize,
}

impl From<&Probe> for Counts {
    fn from(p: &Probe) -> Self {
        Counts { runtime_tasks: p.runtime_tasks, fds: p.fds.len(), threads: p.threads.len() }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // `LEAKCHECK_LOG=debug` (or info, warn, …) shows the bus's own logs while it runs.
    if let Some(level) =
        std::env::var("LEAKCHECK_LOG").ok().and_then(|l| l.parse::<tracing::Level>().ok())
    {
        tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking-pool threads end soon after use, so threads can return to the baseline.
        .thread_keep_alive(Duration::from_millis(100))
        .thread_name("leakcheck-rt")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("leakcheck: cannot build a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let rows = runtime.block_on(run_all(&args));
    let Ok(rows) = rows else {
        return ExitCode::FAILURE;
    };
    print_table(&rows);
    if let Some(dir) = args.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_string_pretty(&rows) {
        Ok(json) => {
            if let Err(error) = std::fs::write(&args.json, json) {
                eprintln!("leakcheck: cannot write {}: {error}", args.json.display());
            } else {
                println!("results written to {}", args.json.display());
            }
        }
        Err(error) => eprintln!("leakcheck: cannot encode the results: {error}"),
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.pass).collect();
    if failed.is_empty() {
        println!("leakcheck: every scenario passed: nothing left behind");
        ExitCode::SUCCESS
    } else {
        for row in &failed {
            eprintln!("\nFAILED: {}", row.run.name);
            for problem in &row.run.problems {
                eprintln!("  problem: {problem}");
            }
            for task in row.run.stuck.iter().chain(&row.leaked_tasks) {
                eprintln!("  leaked task: {task}");
            }
            for fd in &row.leaked.fds {
                eprintln!("  leaked descriptor: {fd}");
            }
            for thread in &row.leaked.threads {
                eprintln!("  leaked thread: {thread}");
            }
            if row.leaked.runtime_tasks > 0 {
                eprintln!("  runtime tasks over the baseline: {}", row.leaked.runtime_tasks);
            }
        }
        eprintln!("\nleakcheck: {} scenario(s) failed", failed.len());
        ExitCode::FAILURE
    }
}

async fn run_all(args: &Args) -> Result<Vec<Row>, ()> {
    let bootstrap = args
        .bootstrap
        .clone()
        .or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok())
        .filter(|b| !b.trim().is_empty());
    let secure = secure_config();
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL
            .into_iter()
            .filter(|s| *s != Scenario::SecureKafkaLoad || secure.is_some())
            .collect()
    } else {
        args.scenarios.clone()
    };
    if secure.is_none() && scenarios.contains(&Scenario::SecureKafkaLoad) {
        eprintln!(
            "leakcheck: secure-kafka-load needs the secured broker: set KAFKA_SECURE_BOOTSTRAP, \
             KAFKA_SECURE_CA, KAFKA_SECURE_USER and KAFKA_SECURE_PASSWORD, or run `cargo xtask \
             leakcheck` (it starts one)"
        );
        return Err(());
    }
    if bootstrap.is_none() && scenarios.iter().any(|s| s.needs_kafka()) {
        eprintln!(
            "leakcheck: the Kafka scenarios need a broker: pass --bootstrap, set KAFKA_BOOTSTRAP, \
             or run `cargo xtask leakcheck` (it starts one)"
        );
        return Err(());
    }
    let ctx = Ctx {
        bootstrap,
        secure,
        inject_leak: Mutex::new(args.inject_leak),
        observed: Mutex::new(Vec::new()),
    };
    let mut rows = Vec::new();
    for scenario in scenarios {
        match scenario {
            Scenario::KafkaLoad | Scenario::MemoryLoad => {
                for &count in &args.counts {
                    rows.push(checked(&ctx, scenario, count).await);
                }
            }
            Scenario::SecureKafkaLoad => {
                let count = args.counts.iter().copied().max().unwrap_or(10_000);
                rows.push(checked(&ctx, scenario, count).await);
            }
            _ => rows.push(checked(&ctx, scenario, 0).await),
        }
    }
    Ok(rows)
}

fn progress(name: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:<28} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.to_owned());
    bar
}

/// Runs one scenario between two readings of the process.
async fn checked(ctx: &Ctx, scenario: Scenario, count: u64) -> Row {
    let name = match scenario {
        Scenario::KafkaLoad => format!("kafka-load {count}"),
        Scenario::SecureKafkaLoad => format!("kafka-sasl-ssl-load {count}"),
        Scenario::MemoryLoad => format!("memory-load {count}"),
        Scenario::StuckHandlers => "stuck-handlers".into(),
        Scenario::RebalanceChurn => "rebalance-churn".into(),
        Scenario::CooperativeChurn => "cooperative-churn".into(),
        Scenario::BrokerFaults => "broker-faults".into(),
        Scenario::DropWithoutShutdown => "drop-without-shutdown".into(),
    };
    let bar = progress(&name);
    let baseline = Probe::now();
    scenario::maybe_inject_leak(ctx);
    let run = Run { name: name.clone(), ..Run::default() };
    let run = match run_scenario(ctx, scenario, count, &bar, run).await {
        Ok(run) => run,
        Err((mut run, error)) => {
            run.problems.push(error);
            run
        }
    };
    bar.finish_and_clear();
    let (after, leaked) = settle(&baseline, SETTLE).await;
    let leaked_tasks: Vec<String> = if leaked.runtime_tasks > 0 {
        ctx.observed
            .lock()
            .iter()
            .flat_map(|scope| scope.live_tasks())
            .map(|task| task.to_string())
            .collect()
    } else {
        Vec::new()
    };
    let pass = run.problems.is_empty() && leaked.is_empty() && run.live_after_shutdown == 0;
    println!(
        "{:<28} {}  {} messages, {} lost, {} out of order{}",
        name,
        if pass { "pass" } else { "FAIL" },
        run.messages,
        run.lost,
        run.out_of_order,
        run.rate.map(|r| format!(", {r:.0} msgs/s")).unwrap_or_default()
    );
    Row { before: (&baseline).into(), after: (&after).into(), leaked, leaked_tasks, pass, run }
}

/// The secured broker's configuration from `KAFKA_SECURE_*`: SASL_SSL with SCRAM-SHA-512, the
/// password read from `KAFKA_SECURE_PASSWORD` when the bus connects.
fn secure_config() -> Option<KafkaConfig> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut config = KafkaConfig::new(&var("KAFKA_SECURE_BOOTSTRAP")?);
    config.security = bus_kafka::security::SecurityConfig {
        protocol: bus_kafka::security::SecurityProtocol::SaslSsl,
        tls: bus_kafka::security::TlsConfig {
            ca_location: var("KAFKA_SECURE_CA").map(PathBuf::from),
            ..Default::default()
        },
        sasl: bus_kafka::security::SaslConfig {
            mechanism: Some(bus_kafka::security::SaslMechanism::ScramSha512),
            username: Some(var("KAFKA_SECURE_USER")?),
            password_env: Some("KAFKA_SECURE_PASSWORD".into()),
            ..Default::default()
        },
    };
    Some(config)
}

/// The configuration of the Kafka scenario's brokers: the secured one for `secure`.
fn kafka_config(ctx: &Ctx, secure: bool) -> Option<KafkaConfig> {
    if secure { ctx.secure.clone() } else { ctx.bootstrap.as_deref().map(KafkaConfig::new) }
}

/// A bus for a scenario: on Kafka when a broker is configured (and `kafka` is asked; the
/// secured one for `secure`), else in memory.
async fn bus_for(ctx: &Ctx, kafka: bool, secure: bool) -> Result<EventBus, String> {
    match kafka_config(ctx, secure) {
        Some(config) if kafka => {
            let bootstrap = config.bootstrap.join(",");
            bus_kafka::connect(config)
                .await
                .map_err(|e| format!("cannot connect to Kafka at {bootstrap}: {e}"))
        }
        _ => Ok(EventBus::in_memory()),
    }
}

async fn create_topics(
    ctx: &Ctx,
    bus: &EventBus,
    topics: &[String],
    partitions: i32,
) -> Result<(), String> {
    create_topics_on(ctx, bus, topics, partitions, false).await
}

/// [`create_topics`], on the secured broker for `secure`.
async fn create_topics_on(
    ctx: &Ctx,
    bus: &EventBus,
    topics: &[String],
    partitions: i32,
    secure: bool,
) -> Result<(), String> {
    if let Some(memory) = bus.memory_backend() {
        for topic in topics {
            memory.create_topic(topic, partitions).map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let Some(config) = kafka_config(ctx, secure) else {
        return Err("no broker".into());
    };
    let admin = bus_kafka::admin::connect(config).await.map_err(|e| e.to_string())?;
    for topic in topics {
        admin.ensure_topic(topic, partitions).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "leakcheck-{}-{prefix}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

async fn run_scenario(
    ctx: &Ctx,
    scenario: Scenario,
    count: u64,
    bar: &ProgressBar,
    run: Run,
) -> Result<Run, (Run, String)> {
    match scenario {
        Scenario::KafkaLoad | Scenario::MemoryLoad | Scenario::SecureKafkaLoad => {
            let secure = scenario == Scenario::SecureKafkaLoad;
            let bus = match bus_for(ctx, scenario != Scenario::MemoryLoad, secure).await {
                Ok(bus) => bus,
                Err(e) => return Err((run, e)),
            };
            let topics = scenario::load::topics(&unique(&format!("load{count}")));
            let partitions = scenario::load::PARTITIONS;
            if let Err(e) = create_topics_on(ctx, &bus, &topics, partitions, secure).await {
                return Err((run, format!("cannot create topics: {e}")));
            }
            let group = unique("group");
            Ok(scenario::load::load(bus, &topics, &group, count, bar, run).await)
        }
        Scenario::StuckHandlers => {
            bar.set_message("waiting for the handlers to get stuck");
            let bus = match bus_for(ctx, true, false).await {
                Ok(bus) => bus,
                Err(e) => return Err((run, e)),
            };
            let topics = [unique("stuck-a"), unique("stuck-b")];
            if let Err(e) = create_topics(ctx, &bus, &topics, 1).await {
                return Err((run, format!("cannot create topics: {e}")));
            }
            Ok(scenario::lifecycle::stuck_handlers(bus, topics, run).await)
        }
        Scenario::DropWithoutShutdown => {
            bar.set_message("publishing, then dropping the bus");
            let bus = match bus_for(ctx, true, false).await {
                Ok(bus) => bus,
                Err(e) => return Err((run, e)),
            };
            let topic = unique("dropped");
            if let Err(e) = create_topics(ctx, &bus, std::slice::from_ref(&topic), 2).await {
                return Err((run, format!("cannot create topics: {e}")));
            }
            Ok(scenario::lifecycle::drop_without_shutdown(bus, topic, run).await)
        }
        Scenario::RebalanceChurn => {
            let bus = match bus_for(ctx, true, false).await {
                Ok(bus) => bus,
                Err(e) => return Err((run, e)),
            };
            let topic = unique("churn");
            if let Err(e) = create_topics(ctx, &bus, std::slice::from_ref(&topic), 6).await {
                return Err((run, format!("cannot create topics: {e}")));
            }
            let churn = scenario::churn::Churn::eager(topic, unique("churn-group"));
            Ok(scenario::churn::rebalance_churn(bus, churn, bar, run).await)
        }
        Scenario::CooperativeChurn => {
            let Some(bootstrap) = &ctx.bootstrap else {
                return Err((run, "no broker".into()));
            };
            let mut config = KafkaConfig::new(bootstrap);
            config.consumer.assignors = vec!["cooperative-sticky".into()];
            let bus = match bus_kafka::connect(config).await {
                Ok(bus) => bus,
                Err(e) => return Err((run, format!("cannot connect to Kafka: {e}"))),
            };
            let topic = unique("coop-churn");
            if let Err(e) = create_topics(ctx, &bus, std::slice::from_ref(&topic), 6).await {
                return Err((run, format!("cannot create topics: {e}")));
            }
            let group = unique("coop-churn-group");
            let churn = scenario::churn::Churn::cooperative(topic, group);
            Ok(scenario::churn::rebalance_churn(bus, churn, bar, run).await)
        }
        Scenario::BrokerFaults => Ok(scenario::faults::broker_faults(bar, run).await),
    }
}

fn print_table(rows: &[Row]) {
    let mut table = Table::new();
    table.set_header(vec![
        "scenario",
        "messages",
        "lost",
        "out of order",
        "msgs/s",
        "shutdown",
        "tasks before/after",
        "fds before/after",
        "threads before/after",
        "verdict",
    ]);
    for row in rows {
        table.add_row(vec![
            Cell::new(&row.run.name),
            Cell::new(row.run.messages),
            Cell::new(row.run.lost),
            Cell::new(row.run.out_of_order),
            Cell::new(row.run.rate.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into())),
            Cell::new(match (row.run.shutdown, row.run.shutdown_deadline) {
                // Held to a deadline: what it took past it (or within it).
                (Some(took), Some(deadline)) => {
                    let past = took.as_secs_f64() - deadline.as_secs_f64();
                    format!("{:.3}s ({:+.0} ms)", took.as_secs_f64(), past * 1000.0)
                }
                (Some(took), None) => format!("{:.3}s", took.as_secs_f64()),
                (None, _) => "-".into(),
            }),
            Cell::new(format!("{}/{}", row.before.runtime_tasks, row.after.runtime_tasks)),
            Cell::new(format!("{}/{}", row.before.fds, row.after.fds)),
            Cell::new(format!("{}/{}", row.before.threads, row.after.threads)),
            Cell::new(if row.pass { "pass" } else { "FAIL" }),
        ]);
    }
    println!("\n{table}");
}
