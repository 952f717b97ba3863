use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use log::{error, info};
use webhook_bridge::config::LogFormat;
use webhook_bridge::startup::StartupError;
use webhook_bridge::{Application, Settings, healthcheck, logging};

/// Log filter when `RUST_LOG` is unset. lapin reports its I/O loop through `tracing`,
/// whose span lines carry nothing an operator needs. actix-http logs every malformed request
/// head at error level, so any client could flood the log; such requests get their 400 all
/// the same.
const DEFAULT_LOG_FILTER: &str = "info,tracing::span=warn,actix_http::h1::dispatcher=off";

/// Receives task callbacks and publishes them as CloudEvents to RabbitMQ or Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; environment variables `WEBHOOK_BRIDGE__*` override it.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Requests /healthz on the port of server.listen over loopback. Exits 0 on a 200
    /// response and 1 otherwise.
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref());

    match cli.command {
        Some(Command::Healthcheck) => match settings {
            Ok(settings) => run_healthcheck(&settings),
            Err(cause) => {
                eprintln!("healthcheck failed: {cause}");
                ExitCode::FAILURE
            }
        },
        None => match settings {
            Ok(settings) => {
                init_logging(settings.log.format);
                actix_web::rt::System::new().block_on(serve(settings))
            }
            // log.format is unknown until the settings load, so this error is in text.
            Err(cause) => {
                init_logging(LogFormat::Text);
                error!("{cause}");
                ExitCode::from(2)
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(DEFAULT_LOG_FILTER),
    );
    logging::set_format(&mut builder, format);
    builder.init();
}

/// Checks the running bridge without starting anything, and prints one line on failure.
fn run_healthcheck(settings: &Settings) -> ExitCode {
    let checked = settings
        .server
        .listen_addr()
        .map_err(|cause| cause.to_string())
        .and_then(|listen| {
            healthcheck::check(healthcheck::probe_address(listen), healthcheck::TIMEOUT)
                .map_err(|cause| cause.to_string())
        });
    match checked {
        Ok(()) => ExitCode::SUCCESS,
        Err(cause) => {
            eprintln!("healthcheck failed: {cause}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    info!(
        config = settings.to_redacted_json();
        "Starting webhook-bridge {}.",
        env!("CARGO_PKG_VERSION")
    );

    let address = &settings.server.listen;
    let listener = match TcpListener::bind(address) {
        Ok(listener) => listener,
        Err(cause) => {
            error!(address = address.as_str(), cause:% = cause; "Failed to listen.");
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
        address = address.as_str(), webhook_path = settings.server.webhook_path.as_str();
        "Listening."
    );

    let code = match app.run_until_stopped().await {
        Ok(()) => {
            info!("Stopped.");
            0
        }
        Err(cause) => {
            error!(cause:% = cause; "Server failed.");
            1
        }
    };
    // Returning would drop the runtime, which waits for every blocking task, such as a Kafka
    // metadata request that may run for kafka.metadata_timeout_ms. The broker clients have
    // flushed and closed by now, so nothing is left to finish.
    std::process::exit(code)
}
