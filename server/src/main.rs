//! The `datastream` binary: the relay (`serve`, the default) and its tools (`publish`, `tail`,
//! `healthcheck`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datastream::{
    Config, Server,
    cli::{self, ToolError},
    config::LogFormat,
};
use tracing_subscriber::EnvFilter;

/// Real-time relay for Photon Ranch: SQS and HTTP publish in, WebSocket subscribers out.
///
/// Without a subcommand, serves (same as `datastream serve`). Exit codes of the tools: 0 success,
/// 1 refused by the relay, 2 bad arguments, 3 relay or queue unreachable.
#[derive(Debug, Parser)]
#[command(name = "datastream", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve(Box<Config>),
    /// Publish one message through the relay's HTTP API or SQS.
    Publish(cli::publish::PublishArgs),
    /// Follow sites and print publications as JSON lines, recovering across reconnects.
    Tail(cli::tail::TailArgs),
    /// Exit 0 if the relay on this host answers /healthz (for container HEALTHCHECKs).
    Healthcheck(cli::healthcheck::HealthcheckArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("DATASTREAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, before the
/// server listens: installed on the future's first poll instead, a signal sent as soon as the
/// server is reachable could still find the default action (exit at once, no graceful close).
#[cfg(unix)]
fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn received(signal: std::io::Result<Signal>) {
        match signal {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    }
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        tokio::select! {
            () = received(term) => {}
            () = received(interrupt) => {}
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl Future<Output = ()> + Send {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    init_tracing(config.log_format);
    let shutdown = shutdown_signal();
    let result = async { Server::bind(config).await?.run(shutdown).await }.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datastream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn tool_exit(result: Result<(), ToolError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datastream: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.config).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::Publish(args)) => tool_exit(cli::publish::run(args).await.map(|answer| println!("{answer}"))),
        Some(Command::Tail(args)) => tool_exit(cli::tail::run(args).await),
        Some(Command::Healthcheck(args)) => tool_exit(cli::healthcheck::run(args).await),
    }
}
