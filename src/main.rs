//! The `voxgate` binary: parse the command line, load the config, serve until a signal
//! (`service`), or act on a running voxgate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use voxgate::config::{Config, DEFAULT_NAME, DEFAULT_TOML};
use voxgate::gateway::explain::{ConfigSource, Live, Question};
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
    /// Show what voxgate would do with a request, without sending it: the route, why the
    /// routes before it do not match, and the request each upstream would get.
    Explain(ExplainArgs),
}

/// `voxgate explain speech model=tts-1 voice=af_sky input=hi`,
/// `voxgate explain transcriptions model=whisper-1 file=@clip.wav`,
/// `voxgate explain other GET /v1/models`.
#[derive(Args)]
struct ExplainArgs {
    /// speech, transcriptions, translations, or other (then METHOD PATH).
    endpoint: String,
    /// Fields: key=value (a string), key:=json (a number, a boolean, an object), key=@path
    /// (a file part); for `other`, the method and path come first.
    words: Vec<String>,
    /// A client header, `name: value` (repeatable); keys are never printed.
    #[arg(long = "header", short = 'H', value_name = "LINE")]
    headers: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Read up and ejected upstreams from a running voxgate's admin listener
    /// (`GET URL/status`), e.g. http://127.0.0.1:9001.
    #[arg(long, value_name = "URL")]
    live: Option<String>,
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
        Some(Command::Explain(args)) => explain(cli.config.as_ref(), args),
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

/// `voxgate explain`: 0 when a route takes the request, 1 when none does (or voxgate
/// refuses it), 2 when the question or the configuration is wrong.
fn explain(config_path: Option<&PathBuf>, args: ExplainArgs) -> ExitCode {
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("voxgate explain: {e}");
        ExitCode::from(2)
    };
    let question = match Question::parse(&args.endpoint, &args.words, &args.headers) {
        Ok(q) => q,
        Err(e) => return usage(&e),
    };
    let config = match load(config_path) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let live = match args.live {
        None => None,
        Some(url) => match control::admin_status(&url) {
            Ok(status) => Some(Live {
                url: url.trim_end_matches('/').to_string(),
                status,
            }),
            Err(e) => return usage(&e),
        },
    };
    let (name, text) = match config_path {
        Some(p) => (p.display().to_string(), std::fs::read_to_string(p).ok()),
        None => (DEFAULT_NAME.to_string(), Some(DEFAULT_TOML.to_string())),
    };
    let source = ConfigSource {
        name: &name,
        text: text.as_deref(),
    };
    match voxgate::gateway::explain::explain(config, source, &question, live.as_ref()) {
        Ok(explanation) => {
            if args.json {
                match serde_json::to_string_pretty(&explanation) {
                    Ok(json) => println!("{json}"),
                    Err(e) => return usage(&e),
                }
            } else {
                print!("{}", explanation.text());
            }
            if explanation.matched() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => usage(&e),
    }
}
