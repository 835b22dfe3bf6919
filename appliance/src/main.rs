//! The `livemount` binary: a thin adapter from the command line to the libraries.

mod api_types;
mod cli;
mod client;
mod cloud;
mod commands;
mod config;
mod crash_hook;
mod daemon;
mod library_source;
mod output;
mod partitions;
mod random;

fn main() {
    let cli = cli::Cli::from_args();
    let result = match &cli.command {
        cli::Command::Library(cmd) => commands::library::run(&cli, cmd),
        cli::Command::Backup(cmd) => commands::backup::run(&cli, cmd),
        cli::Command::Serve(args) => commands::serve::run(&cli, args),
        cli::Command::Mount(args) => commands::mount::mount(&cli, args),
        cli::Command::Mounts => commands::mount::list(&cli),
        cli::Command::Unmount(args) => commands::mount::unmount(&cli, args),
        cli::Command::Browse(args) => commands::browse::browse(&cli, args),
        cli::Command::Unbrowse(args) => commands::browse::unbrowse(&cli, args),
        cli::Command::Image(cmd) => commands::image::run(&cli, cmd),
        cli::Command::Cloud(cmd) => commands::cloud::run(&cli, cmd),
        cli::Command::Status => commands::status::run(&cli),
        cli::Command::Token(cmd) => commands::token::run(&cli, cmd),
        cli::Command::Generate(args) => commands::generate::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line with the whole chain of causes, as a person reads it.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("livemount: error: {msg}");
            std::process::exit(1);
        }
    }
}
