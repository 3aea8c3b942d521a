//! Command line of `coupon-tools`: the load generator and the flash-crowd demo, kept out of
//! the production binary (`coupon-service`) and its image.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use coupon_core::event::{EventId, EventKey};
use coupon_core::telemetry::LogFormat;

use super::cli::Redacted;
use super::load::LoadIdentity;

#[derive(Parser, Debug)]
#[command(name = "coupon-tools", version, about = "Flash crowds against a coupon api, and the whole path on one machine")]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send a flash crowd of applies to a running api.
    Load(Box<LoadArgs>),
    /// Run the whole path locally (Redis, Kafka or its in-process mock, SQLite) and show
    /// that exactly `limit` coupons are issued and persisted.
    Demo(super::demo::DemoArgs),
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Base URL of the api.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Event name.
    #[arg(long)]
    pub event: String,
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Send every request as the same user.
    #[arg(long)]
    pub same_user: bool,
    /// Spread the request starts over this long (e.g. 2s); default all at once.
    #[arg(long, default_value = "0s", value_parser = coupon_core::time::parse_duration)]
    pub ramp: Duration,
    #[arg(long, default_value = "user-")]
    pub user_prefix: String,
    /// Count rows of the event in this database and fail unless they equal --expect-rows.
    #[arg(long, env = "VERIFY_DATABASE_URL", hide_env_values = true)]
    pub verify: Option<String>,
    /// Rows expected with --verify (the event's limit).
    #[arg(long)]
    pub expect_rows: Option<i64>,
    /// Namespace of the event, for --verify.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// For --verify: the UID of the event's CouponEvent, part of the key its rows carry
    /// (`<namespace>/<name>@<uid>`); omit for an event made with `event create`.
    #[arg(long)]
    pub uid: Option<String>,
    /// For an api with AUTH_MODE=jwt: sign an HS256 token per user with this secret (its
    /// JWT_SECRET); the user is the token's `sub`.
    #[arg(long, env = "LOAD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Redacted>,
    /// `iss` of the minted tokens.
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// `aud` of the minted tokens.
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// For an api with AUTH_MODE=header: send the user id in this header.
    #[arg(long, conflicts_with = "jwt_secret")]
    pub auth_header: Option<String>,
    /// For an `https://` url behind a private certificate: the PEM file of the CA that signed
    /// it (the system's roots are trusted as well).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Entry point shared by the `coupon-tools` binary and the test harness's copy of it.
pub fn main() -> std::process::ExitCode {
    super::cli::run_command_line(|cli: Cli| {
        // Only what went wrong: the tools print their own report.
        let default_level = match cli.command {
            Command::Demo(_) => "error,rdkafka=off,librdkafka=off",
            Command::Load(_) => "warn",
        };
        let command = async move {
            match cli.command {
                Command::Load(args) => run_load(*args).await,
                Command::Demo(args) => super::demo::run(args).await,
            }
        };
        (cli.log_format, default_level, command)
    })
}

async fn run_load(args: LoadArgs) -> anyhow::Result<std::process::ExitCode> {
    let plan = super::load::LoadPlan {
        base_url: args.url,
        event: args.event.clone(),
        requests: args.requests,
        concurrency: args.concurrency,
        same_user: args.same_user,
        users: None,
        user_prefix: args.user_prefix,
        ramp: args.ramp,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        identity: match (args.jwt_secret, args.auth_header) {
            (Some(secret), _) => LoadIdentity::hs256(&secret.0, args.jwt_issuer, args.jwt_audience),
            (None, Some(header)) => LoadIdentity::Header(header),
            (None, None) => LoadIdentity::Body,
        },
        ca_file: args.ca_file,
    };
    let report = super::load::run(&plan).await?;
    println!("{}", report.table());
    // A crowd that reached nothing measured nothing: said, and not a success.
    let answered = report.total() - report.count(0);
    if answered == 0 {
        let why = report.first_failure.as_deref().unwrap_or("no answer");
        eprintln!("no request was answered ({} sent) at {}: {why}", report.total(), plan.base_url);
        return Ok(std::process::ExitCode::FAILURE);
    }
    if let Some(url) = args.verify {
        let expected = args.expect_rows.ok_or_else(|| anyhow::anyhow!("--verify needs --expect-rows"))?;
        let key = EventKey::new(EventId::new(&args.namespace, &args.event)?, args.uid.as_deref())?;
        let store = crate::sql::Store::connect(&url).await?;
        let rows = store.count_coupons(&key.to_string()).await?;
        println!("rows in SQL for {key}: {rows} (expected {expected})");
        if rows != expected {
            eprintln!("verify failed: {rows} rows, expected {expected}");
            return Ok(std::process::ExitCode::FAILURE);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
