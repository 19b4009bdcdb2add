//! `opsctl resolve service/NAME`: where a service is reached; and the load
//! balancers `get service/NAME` shows after the resource.

use std::io::{self, Write};

use anyhow::{anyhow, Result};
use clap::Args;
use opsd_client::{is_stream_break, Nodes, Patience};
use opsd_proto::v1::{Endpoints, NodeEndpoint, ResolveRequest, Resource};
use serde_json::{json, Value};

use crate::render::{
    dash_if_empty, key_values, one_line, resource_json, write_json, yes_no, OutputFormat, Printer, Table,
};
use crate::spec::ResourceRef;

/// The kind `resolve` takes.
pub const SERVICE_KIND: &str = "service";

/// `opsctl resolve service/NAME`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The service, as service/NAME.
    #[arg(value_name = "service/NAME", value_parser = ResourceRef::parse)]
    target: ResourceRef,
    /// Keep printing the endpoints each time they change (a swap, a swap
    /// back, machines added or removed), until interrupted.
    #[arg(long)]
    watch: bool,
    /// Read the answering node's state without confirming with the leader.
    #[arg(long)]
    stale: bool,
}

/// `opsctl resolve`: prints the endpoints once, or on every change.
pub async fn resolve(args: ResolveArgs, nodes: &Nodes, format: OutputFormat) -> Result<()> {
    if args.target.kind != SERVICE_KIND {
        // A usage error, like clap's own (exit code 2).
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "resolve takes a service, as service/NAME, not {} (of kind {})\n",
                args.target, args.target.kind
            ),
        )
        .exit();
    }
    let request = ResolveRequest {
        name: args.target.name.clone(),
        stale: args.stale,
    };
    if !args.watch {
        let answer = nodes
            .call_with(&request, |mut api, r| async move { api.services.resolve(r).await })
            .await?;
        return print_endpoints(&answer, format, false);
    }
    // A broken stream is opened again through the next address; its first
    // message is the whole answer, so nothing is missed.
    let mut first = 0;
    loop {
        let (at, mut stream) = nodes
            .call_patiently(first, Patience::default(), |mut api| {
                let request = request.clone();
                async move { api.services.watch_resolve(request).await }
            })
            .await?;
        first = at;
        loop {
            match stream.message().await {
                Ok(Some(answer)) => print_endpoints(&answer, format, true)?,
                Ok(None) => return Ok(()),
                Err(status) if is_stream_break(&status) => break,
                Err(status) => return Err(anyhow!(opsd_client::describe_status(&status))),
            }
        }
    }
}

/// The JSON form of the endpoints: `name`, `state`, `port`, `active` and
/// `previous` (null if none), `endpoints` (per node: `node_id`, `address`,
/// `listening`, `error` (null if none)) and `backends` (`index`, `address`).
pub fn endpoints_json(e: &Endpoints) -> Value {
    json!({
        "name": e.name,
        "state": e.state,
        "port": e.port,
        "active": null_if_empty(&e.active),
        "previous": null_if_empty(&e.previous),
        "endpoints": e.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "address": null_if_empty(&n.address),
            "listening": n.listening,
            "error": null_if_empty(&n.error),
        })).collect::<Vec<_>>(),
        "backends": e.backends.iter().map(|b| json!({"index": b.index, "address": b.address})).collect::<Vec<_>>(),
    })
}

fn null_if_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

fn print_endpoints(e: &Endpoints, format: OutputFormat, watching: bool) -> Result<()> {
    let mut out = io::stdout().lock();
    match format {
        // A watch prints one JSON object per line, as `settings watch` does.
        OutputFormat::Json if watching => writeln!(out, "{}", endpoints_json(e))?,
        OutputFormat::Json => write_json(&mut out, &endpoints_json(e))?,
        OutputFormat::Table => {
            key_values(&[
                ("service", one_line(&e.name, None)),
                ("state", one_line(&e.state, None)),
                ("port", e.port.to_string()),
                ("active", dash_if_empty(one_line(&e.active, None))),
                ("previous", dash_if_empty(one_line(&e.previous, None))),
            ])
            .write_rows(&mut out)?;
            writeln!(out)?;
            writeln!(out, "endpoints:")?;
            let mut table = Table::new(&["NODE", "ADDRESS", "LISTENING", "ERROR"]);
            for n in &e.nodes {
                table.row(vec![
                    n.node_id.to_string(),
                    dash_if_empty(one_line(&n.address, None)),
                    yes_no(n.listening).to_string(),
                    dash_if_empty(one_line(&n.error, None)),
                ]);
            }
            table.write(&mut out)?;
            writeln!(out)?;
            writeln!(out, "backends ({}):", dash_if_empty(one_line(&e.active, None)))?;
            let mut table = Table::new(&["INDEX", "ADDRESS"]);
            for b in &e.backends {
                table.row(vec![b.index.to_string(), one_line(&b.address, None)]);
            }
            table.write(&mut out)?;
            if watching {
                writeln!(out)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The JSON form of the load balancers (`get service/NAME`'s `balancers`):
/// per node `node_id`, `endpoint`, `listening`, `error` (null if none) and
/// `backends` (`cluster`, `index`, `address`, `healthy`, `draining`,
/// `open_connections`, `total_connections`, `bytes_in`, `bytes_out`,
/// `detail`).
pub fn balancers_json(nodes: &[NodeEndpoint]) -> Value {
    nodes
        .iter()
        .map(|n| {
            let backends: Vec<Value> = n
                .balancer
                .iter()
                .flat_map(|b| &b.backends)
                .map(|b| {
                    json!({
                        "cluster": b.cluster,
                        "index": b.index,
                        "address": b.address,
                        "healthy": b.healthy,
                        "draining": b.draining,
                        "open_connections": b.open_connections,
                        "total_connections": b.total_connections,
                        "bytes_in": b.bytes_in,
                        "bytes_out": b.bytes_out,
                        "detail": null_if_empty(&b.detail),
                    })
                })
                .collect();
            json!({
                "node_id": n.node_id,
                "endpoint": null_if_empty(&n.address),
                "listening": n.listening,
                "error": null_if_empty(&n.error),
                "backends": backends,
            })
        })
        .collect()
}

/// The load balancers as a table: one row per node and backend.
pub fn write_balancers(out: &mut impl Write, nodes: &[NodeEndpoint]) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "balancers:")?;
    let mut table = Table::new(&[
        "NODE",
        "ENDPOINT",
        "CLUSTER",
        "MACHINE",
        "ADDRESS",
        "HEALTHY",
        "OPEN",
        "TOTAL",
        "BYTES_IN",
        "BYTES_OUT",
    ]);
    for n in nodes {
        let endpoint = match (n.listening, n.error.as_str()) {
            (_, e) if !e.is_empty() => one_line(e, Some(60)),
            _ => one_line(&n.address, None),
        };
        let backends: Vec<_> = n.balancer.iter().flat_map(|b| &b.backends).collect();
        if backends.is_empty() {
            table.row(vec![n.node_id.to_string(), endpoint, "-".into()]);
            continue;
        }
        for b in backends {
            let health = match (b.draining, b.healthy) {
                (true, _) => "draining",
                (false, true) => "yes",
                (false, false) => "no",
            };
            table.row(vec![
                n.node_id.to_string(),
                endpoint.clone(),
                one_line(&b.cluster, None),
                b.index.to_string(),
                one_line(&b.address, None),
                health.to_string(),
                b.open_connections.to_string(),
                b.total_connections.to_string(),
                b.bytes_in.to_string(),
                b.bytes_out.to_string(),
            ]);
        }
    }
    table.write(out)
}

/// `get service/NAME`: the resource as `get` prints it, then every node's
/// load balancer for it (JSON: the resource with an extra `balancers`
/// array, null if the load balancers could not be asked).
pub async fn get_service(resource: &Resource, nodes: &Nodes, stale: bool, printer: Printer) -> Result<()> {
    let request = ResolveRequest {
        name: resource.name.clone(),
        stale,
    };
    let balancers = match nodes
        .call_with(&request, |mut api, r| async move { api.services.resolve(r).await })
        .await
    {
        Ok(answer) => Some(answer.nodes),
        Err(e) => {
            eprintln!("note: the load balancers could not be asked: {e}");
            None
        }
    };
    if printer.format() == OutputFormat::Json {
        let mut value = resource_json(resource);
        value["balancers"] = balancers.as_deref().map(balancers_json).unwrap_or(Value::Null);
        return Ok(write_json(&mut io::stdout().lock(), &value)?);
    }
    printer.resource(resource)?;
    if let Some(nodes) = balancers {
        write_balancers(&mut io::stdout().lock(), &nodes)?;
    }
    Ok(())
}
