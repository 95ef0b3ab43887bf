//! `busctl check`: connect with the configuration and report what a service would meet: the
//! brokers and their API versions beside the client's, the security in force and whether the
//! authentication went through, the settings that weaken it (named, not failing the check),
//! and what would stop a service from starting.
//!
//! Owns: `run`. A problem found exits with `Exit::Partial`; no broker answering (or a refused
//! authentication) with `Exit::Unreachable`, within the request timeout.

use bus_kafka::{KafkaConfig, admin::ApiSupport};
use serde::Serialize;

use crate::output::Output;
use crate::{Exit, Failure, Outcome};

#[derive(Serialize)]
struct Report {
    bootstrap: Vec<String>,
    security_protocol: String,
    sasl: Option<String>,
    authenticated: bool,
    /// Settings in force that weaken security (they do not fail the check).
    insecure: Vec<String>,
    controller: Option<i32>,
    brokers: Vec<bus_kafka::admin::BrokerDescription>,
    problems: Vec<String>,
}

pub(crate) async fn run(config: KafkaConfig, out: &Output) -> Outcome {
    let protocol = format!("{:?}", config.security.protocol);
    let sasl = config.security.protocol.uses_sasl().then(|| {
        let mechanism =
            config.security.sasl.mechanism.map(|m| format!("{m:?}")).unwrap_or_default();
        let user = config.security.sasl.username.clone().unwrap_or_default();
        format!("{mechanism} as `{user}`")
    });
    let bootstrap = config.bootstrap.clone();
    let insecure = config.security.insecure_settings();
    let admin = bus_kafka::admin::connect(config).await.map_err(Failure::from)?;
    let cluster = admin.describe_cluster().await.map_err(Failure::from)?;
    let mut problems = Vec::new();
    for broker in &cluster.brokers {
        if let Some(error) = &broker.error {
            problems.push(format!(
                "broker {} ({}) cannot be reached: {error}",
                broker.node_id, broker.address
            ));
        }
        for api in broker.apis.iter().filter(|a| a.required && a.negotiated.is_none()) {
            problems.push(format!(
                "broker {} ({}) offers no version of {} that the client speaks (client {}, broker {})",
                broker.node_id,
                broker.address,
                api.name,
                range(api.client),
                range(api.broker)
            ));
        }
    }
    if cluster.brokers.is_empty() {
        problems.push("the cluster's metadata lists no broker".to_owned());
    }
    let report = Report {
        bootstrap,
        security_protocol: protocol,
        sasl,
        authenticated: true,
        insecure,
        controller: cluster.controller,
        brokers: cluster.brokers,
        problems,
    };
    if out.json {
        out.print_json(&report);
    } else {
        print_report(&report, out);
    }
    Ok(if report.problems.is_empty() { Exit::Done } else { Exit::Partial })
}

fn range(range: Option<(i16, i16)>) -> String {
    range.map_or_else(|| "none".to_owned(), |(min, max)| format!("v{min}-v{max}"))
}

fn print_report(report: &Report, out: &Output) {
    println!("bootstrap:  {}", report.bootstrap.join(","));
    println!("security:   {}", report.security_protocol);
    match &report.sasl {
        Some(sasl) => println!("sasl:       {sasl}: {}", out.verdict(true, "authenticated")),
        None => println!("sasl:       none"),
    }
    let controller = report.controller.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
    println!("controller: {controller}");
    for broker in &report.brokers {
        println!();
        println!("broker {} at {}", broker.node_id, broker.address);
        if let Some(error) = &broker.error {
            println!("  {}", out.verdict(false, error));
            continue;
        }
        let mut table = out.table(&["api", "key", "broker", "client", "speaks", "needed"]);
        for api in broker.apis.iter().filter(|a| a.client.is_some()) {
            table.add_row(row(api, out));
        }
        println!("{table}");
    }
    println!();
    for insecure in &report.insecure {
        println!("{}", out.verdict(false, &format!("INSECURE: {insecure}")));
    }
    if report.problems.is_empty() {
        println!("{}", out.verdict(true, "OK: nothing would stop a service from starting"));
    } else {
        for problem in &report.problems {
            println!("{}", out.verdict(false, &format!("PROBLEM: {problem}")));
        }
    }
}

fn row(api: &ApiSupport, out: &Output) -> Vec<String> {
    let speaks = match api.negotiated {
        Some(version) => out.verdict(true, &format!("v{version}")),
        None if api.required => out.verdict(false, "none"),
        None => "none".to_owned(),
    };
    vec![
        api.name.clone(),
        api.key.to_string(),
        range(api.broker),
        range(api.client),
        speaks,
        if api.required { "yes".to_owned() } else { "no".to_owned() },
    ]
}
