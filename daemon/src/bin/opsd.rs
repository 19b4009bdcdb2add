//! The `opsd` daemon, and its `check` and `recover` commands.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use opsd::config::{Config, Flags, LogFormat, Subcommand};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let mut flags = Flags::parse();
    let command = flags.command.take();
    let config = match Config::resolve(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("opsd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rejoin = match command {
        Some(Subcommand::Check) => {
            return if opsd::recover::check(&config.data_dir) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Some(Subcommand::Recover { rejoin }) => Some(rejoin),
        None => None,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=off"));
    // Colours only for a person at a terminal: a log file or a journal gets
    // plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let config_format = config.log_format;
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("opsd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        match rejoin {
            Some(rejoin) => opsd::recover::recover(config, rejoin).await,
            None => opsd::server::run(config).await,
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: as a log record for JSON logs (a collector reads
        // those), else as the last line on stderr.
        Err(e) => {
            match config_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("opsd: {e:#}"),
            }
            if e.downcast_ref::<opsd::server::DiskError>().is_some() {
                ExitCode::from(opsd::server::EXIT_DISK)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
