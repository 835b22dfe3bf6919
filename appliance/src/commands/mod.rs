//! One module per subcommand group.

pub mod backup;
pub mod browse;
pub mod cloud;
pub mod generate;
pub mod image;
pub mod library;
pub mod mount;
pub mod serve;
pub mod status;
pub mod token;

use anyhow::Context;
use dedup::Library;

use crate::cli::Cli;

/// Opens the library the command line names.
pub fn open_library(cli: &Cli) -> anyhow::Result<Library> {
    Library::open(&cli.library).with_context(|| format!("library {}", cli.library.display()))
}
