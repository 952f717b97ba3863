use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info};
use webhook_bridge::startup::StartupError;
use webhook_bridge::{Application, Settings};

/// Log filter when `RUST_LOG` is unset. lapin reports its I/O loop through `tracing`,
/// whose span lines carry nothing an operator needs.
const DEFAULT_LOG_FILTER: &str = "info,tracing::span=warn";

/// Receives task callbacks and publishes them as CloudEvents to RabbitMQ or Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; environment variables `WEBHOOK_BRIDGE__*` override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER))
        .init();
    let cli = Cli::parse();

    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(cause) => {
            error!("{cause}");
            return ExitCode::from(2);
        }
    };
    info!(
        "Starting webhook-bridge {}. config={}",
        env!("CARGO_PKG_VERSION"),
        settings.to_redacted_json()
    );

    let address = &settings.server.listen;
    let listener = match TcpListener::bind(address) {
        Ok(listener) => listener,
        Err(cause) => {
            error!("Failed to listen. address={address} cause={cause}");
            return ExitCode::FAILURE;
        }
    };
    let app = match Application::build(settings.clone(), listener).await {
        Ok(app) => app,
        // librdkafka checks some combinations of properties only when the client is created.
        Err(cause @ StartupError::Kafka(_)) => {
            let cause = settings.kafka.options.redact(&cause.to_string());
            error!("invalid configuration: kafka.options: {cause}");
            return ExitCode::from(2);
        }
        Err(cause) => {
            error!("{cause}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        "Listening. address={address} webhook_path={}",
        settings.server.webhook_path
    );

    let code = match app.run_until_stopped().await {
        Ok(()) => {
            info!("Stopped.");
            0
        }
        Err(cause) => {
            error!("Server failed. cause={cause}");
            1
        }
    };
    // Returning would drop the runtime, which waits for every blocking task, such as a Kafka
    // metadata request that may run for kafka.metadata_timeout_ms. The broker clients have
    // flushed and closed by now, so nothing is left to finish.
    std::process::exit(code)
}
