//! `kubectl scopegate`: a kubectl plugin for app teams and GitOps pipelines.
//!
//! - `explain`: the decision the sidecar takes on one request, and why, computed by the very
//!   functions the sidecar runs (`scopegate_core`).
//! - `lint`: rules that can never win, public rules that take protected paths, scopes outside
//!   the issuer's vocabulary, rate limits that never count; exit 1 on an error finding.
//! - `token`: decode a token, verify it against a JWKS (file, URL, or the keys a policy
//!   trusts) and list which policies of a namespace would accept it.
//! - `status`: one screen per namespace.
//! - `openapi import|export`: AuthPolicy rules from an OpenAPI document, and the OAuth2
//!   security scheme and per-operation security of a policy for an OpenAPI document.
//!
//! Exit codes: 0 ok; 1 the command ran and found a problem (lint errors, a token that does
//! not verify); 2 usage; 3 not found or no access; 4 anything else that stopped it.

mod cluster;
mod explain;
mod fetch;
mod lint;
mod openapi;
mod output;
mod samples;
mod source;
mod status;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-scopegate",
    bin_name = "kubectl scopegate",
    version,
    about = "Explain, lint and inspect scopegate policies; map OpenAPI documents to policies",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes, as kubectl spells them.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's namespace, then "default").
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The decision the sidecar takes on a request, and why.
    ///
    /// kubectl scopegate explain orders GET /items/42 --scopes read:items
    Explain(explain::Args),
    /// Check a policy's rules: unreachable rules, public rules over protected paths, scopes
    /// outside the vocabulary, rate limits that never count. Exit 1 on errors.
    Lint(lint::Args),
    /// Decode a token, verify it, and list the policies that would accept it.
    Token(token::Args),
    /// One screen per namespace: policies, issuers, keys, clients, pods and their sidecars.
    Status(status::Args),
    /// OpenAPI documents: import an AuthPolicy from one, export a policy's security into one.
    #[command(subcommand)]
    Openapi(openapi::Command),
}

/// An error that decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The command ran and found problems (already printed).
    #[error("{0}")]
    Findings(String),
    /// An object or file does not exist, or access was refused.
    #[error("{0}")]
    NotFound(String),
}

fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return match failure {
            Failure::Findings(_) => 1,
            Failure::NotFound(_) => 3,
        };
    }
    if let Some(kube::Error::Api(status)) = err.downcast_ref::<kube::Error>()
        && matches!(status.code, 401 | 403 | 404)
    {
        return 3;
    }
    4
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(4);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit_code(&err);
            if !matches!(err.downcast_ref::<Failure>(), Some(Failure::Findings(_))) {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Explain(args) => explain::run(&global, args).await,
        Command::Lint(args) => lint::run(&global, args).await,
        Command::Token(args) => token::run(&global, args).await,
        Command::Status(args) => status::run(&global, args).await,
        Command::Openapi(command) => openapi::run(&global, command).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
