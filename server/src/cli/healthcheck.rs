//! `datastream healthcheck`: GET the relay's `/healthz`; exit 0 on 200.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use super::ToolError;

/// Arguments of `datastream healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The relay's address; `0.0.0.0`/`::` mean this host. Defaults to the serving address.
    #[arg(long, env = "DATASTREAM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs the check.
pub async fn run(args: HealthcheckArgs) -> Result<(), ToolError> {
    let mut addr = args.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let url = format!("http://{addr}/healthz");
    let client =
        reqwest::Client::builder().timeout(args.timeout).build().map_err(|e| ToolError::Unreachable(e.to_string()))?;
    let resp = client.get(&url).send().await.map_err(|e| ToolError::Unreachable(format!("{url}: {e}")))?;
    if resp.status().is_success() { Ok(()) } else { Err(ToolError::Refused(format!("{url}: HTTP {}", resp.status()))) }
}
