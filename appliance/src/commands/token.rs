//! `livemount token create|list|revoke`: the bearer tokens of the remote API, managed by root on the
//! appliance over the local socket (the remote API does not serve these routes).

use clap::Subcommand;

use crate::api_types::{TokenCreated, TokenInfo, TokenRequest};
use crate::cli::Cli;
use crate::client::Client;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token; it is printed once and never kept (only its digest is).
    Create { name: String },
    /// List the tokens that work (their names and when they were made).
    List,
    /// Revoke a token: the next request that presents it is refused.
    Revoke { name: String },
}

pub fn run(cli: &Cli, cmd: &TokenCmd) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    match cmd {
        TokenCmd::Create { name } => {
            let made: TokenCreated = client.post("/v1/tokens", &TokenRequest { name: name.clone() })?;
            if cli.json {
                print_json(&made);
            } else {
                println!("{}", made.token);
                eprintln!("token {} made: keep it now, it is not shown again (LIVEMOUNT_TOKEN or --token)", made.name);
            }
        }
        TokenCmd::List => {
            let tokens: Vec<TokenInfo> = client.get("/v1/tokens")?;
            if cli.json {
                print_json(&tokens);
            } else if tokens.is_empty() {
                println!("no tokens");
            } else {
                for t in tokens {
                    println!("{}  made {}", t.name, t.created);
                }
            }
        }
        TokenCmd::Revoke { name } => {
            let _: serde_json::Value = client.delete(&format!("/v1/tokens/{name}"))?;
            if !cli.json {
                println!("token {name} revoked");
            }
        }
    }
    Ok(0)
}
