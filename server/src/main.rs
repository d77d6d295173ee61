//! The `datastream` binary: parse configuration, set up logging, run the relay until SIGTERM or
//! SIGINT.

use clap::Parser;
use datastream::{Config, Server, config::LogFormat};
use tracing_subscriber::EnvFilter;

/// Real-time relay for Photon Ranch: SQS and HTTP publish in, WebSocket subscribers out.
#[derive(Debug, Parser)]
#[command(name = "datastream", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("DATASTREAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.config.log_format);
    let server = Server::bind(cli.config).await?;
    server.run(shutdown_signal()).await
}
