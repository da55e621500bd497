use std::process::ExitCode;

use clap::Parser;
use killboard_sidecar::config::{Cli, Command, SdeCommand};
use killboard_sidecar::{feed, metrics, sde, worker, Result};
use tracing_subscriber::EnvFilter;

fn init_logging(format: &str) {
    let filter =
        EnvFilter::try_from_env("KILLBOARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

async fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            let m = metrics::Metrics::new();
            if let Some(addr) = args.http.metrics_addr()? {
                metrics::serve(addr, m.clone(), args.db.database_url.clone()).await?;
            }
            let ctx = worker::build_ctx(args, m)?;
            tokio::select! {
                r = worker::run(ctx) => r,
                _ = shutdown_signal() => { tracing::info!("stopping"); Ok(()) }
            }
        }
        Command::Feed(args) => {
            let m = metrics::Metrics::new();
            if let Some(addr) = args.http.metrics_addr()? {
                metrics::serve(addr, m.clone(), args.db.database_url.clone()).await?;
            }
            tokio::select! {
                r = feed::run(args, m) => r,
                _ = shutdown_signal() => { tracing::info!("stopping"); Ok(()) }
            }
        }
        Command::Sde {
            command: SdeCommand::Load { dir, db },
        } => {
            for (table, rows) in sde::load(&dir, &db.database_url).await? {
                println!("{table}\t{rows}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e.kind_str(), "exiting");
            ExitCode::FAILURE
        }
    }
}
