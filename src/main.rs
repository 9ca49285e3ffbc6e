//! The `tierblk` command: argument parsing only; all logic is in the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tierblk::{config::Config, daemon};

/// vhost-user-blk storage daemon with predictive, cost-aware data tiering.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve every volume of the config on its vhost-user socket until
    /// SIGINT/SIGTERM.
    Serve {
        /// Daemon config (TOML): tiers, volumes, daemon settings.
        #[arg(long, short)]
        config: PathBuf,
        /// Create missing state, socket and tier directories.
        #[arg(long)]
        create_dirs: bool,
    },
    /// Check a config file and print it with all defaults filled in.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn run(cli: Cli) -> tierblk::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            create_dirs,
        } => {
            let cfg = Config::load(&config)?;
            daemon::serve(&cfg, &daemon::ServeOptions { create_dirs })
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            print!(
                "{}",
                toml::to_string_pretty(&cfg).expect("a loaded config serializes")
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tierblk: {e}");
            ExitCode::FAILURE
        }
    }
}
