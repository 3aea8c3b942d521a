//! `stand-in-node`: runs the chart's Pods as local processes against a real API server (see
//! `coupon_tests::stand_in_node`). Started by `dev/kube up`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use coupon_tests::stand_in_node::{run, NodeConfig};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Parser)]
struct Args {
    /// The node's credentials (the local control plane's admin kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The CA certificate (PEM) the Pods' kubeconfigs trust for the API server.
    #[arg(long)]
    ca_file: PathBuf,
    #[arg(long, default_value = "local-node")]
    name: String,
    /// Each Pod's folder (volumes, kubeconfig, container logs) goes under it.
    #[arg(long)]
    state_dir: PathBuf,
    /// IMAGE=PATH: the local binary that runs containers of an image whose last path segment
    /// (without tag) is IMAGE. Repeatable.
    #[arg(long = "binary", value_parser = parse_binary)]
    binaries: Vec<(String, PathBuf)>,
}

fn parse_binary(value: &str) -> Result<(String, PathBuf)> {
    let Some((image, path)) = value.split_once('=') else { bail!("expected IMAGE=PATH, got {value:?}") };
    Ok((image.to_owned(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> Result<()> {
    coupon_core::telemetry::init_logging(coupon_core::telemetry::LogFormat::Text, "info");
    let args = Args::parse();
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig).with_context(|| format!("read {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let server = config.cluster_url.to_string().trim_end_matches('/').to_owned();
    let client = kube::Client::try_from(config)?;
    let ca_pem = std::fs::read_to_string(&args.ca_file).with_context(|| format!("read {}", args.ca_file.display()))?;
    let binaries: BTreeMap<String, PathBuf> = args.binaries.into_iter().collect();
    run(client, NodeConfig { name: args.name, state_dir: args.state_dir, binaries, server, ca_pem }).await
}
