//! The `voxgate` binary: parse the command line, load the config, serve until a signal
//! (`service`), or act on a running voxgate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use voxgate::config::{Config, DEFAULT_TOML};
use voxgate::gateway::reload::Source;
use voxgate::service::{self, control, Options};

/// jemalloc instead of glibc's malloc: 9 % fewer instructions per small request (malloc
/// and free were a fifth of them), idle RSS 8.7 MiB, upload peaks no higher
/// (benches/README.md). Built from C by tikv-jemalloc-sys: needs gcc and make.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A routing, streaming, falling-back proxy for the OpenAI audio API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, the built-in default is used.
    #[arg(long, short, env = "VOXGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `server.listen` (also across reloads).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Write the process id to this file once listening; with `reload`, the file to read
    /// the process id from.
    #[arg(long, global = true)]
    pid_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration: exit 0, or print every error with file:line:col.
    Check,
    /// Print the built-in default configuration.
    PrintConfig,
    /// Make a running voxgate reload its configuration file.
    Reload(ReloadArgs),
}

/// `voxgate reload --pid-file F` sends SIGHUP to the process that wrote F;
/// `voxgate reload --admin URL` asks its admin listener and prints the outcome.
#[derive(Args)]
struct ReloadArgs {
    /// Ask over HTTP: `POST /reload` on this admin listener (`server.admin_listen`), e.g.
    /// http://127.0.0.1:9001; prints what changed, or the file's errors.
    #[arg(long, conflicts_with = "pid_file")]
    admin: Option<String>,
}

fn load(path: Option<&PathBuf>) -> Result<Config, voxgate::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::builtin(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::PrintConfig) => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Some(Command::Check) => match load(cli.config.as_ref()) {
            Ok(config) => {
                println!(
                    "ok: {} upstream(s), {} route(s)",
                    config.upstreams.len(),
                    config.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Reload(args)) => {
            let result = match (args.admin, cli.pid_file) {
                (Some(admin), _) => control::admin_reload(&admin),
                (None, Some(pid_file)) => control::signal_reload(&pid_file),
                (None, None) => Err("give --admin URL or --pid-file FILE".to_string()),
            };
            match result {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("voxgate reload: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match load(cli.config.as_ref()) {
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
            Ok(mut config) => {
                if let Some(listen) = cli.listen {
                    config.server.listen = listen;
                }
                let options = Options {
                    source: Source {
                        path: cli.config,
                        listen: cli.listen,
                    },
                    pid_file: cli.pid_file,
                };
                match service::run(config, options) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("voxgate: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        },
    }
}
