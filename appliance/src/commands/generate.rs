//! `livemount generate`: the man pages and shell completions, written from the command line's own
//! definition so that they never drift from it (the Debian package runs this when it is built).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};

use crate::cli::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Write `livemount.1` and one page per subcommand (`livemount-mount.1`, …) here.
    #[arg(long)]
    pub man: Option<PathBuf>,
    /// Write the bash, zsh and fish completions here (`livemount.bash`, `_livemount`, `livemount.fish`).
    #[arg(long)]
    pub completions: Option<PathBuf>,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<i32> {
    if args.man.is_none() && args.completions.is_none() {
        anyhow::bail!("nothing to write: give --man DIR, --completions DIR or both");
    }
    if let Some(dir) = &args.man {
        create(dir)?;
        clap_mangen::generate_to(Cli::command(), dir)
            .with_context(|| format!("writing man pages to {}", dir.display()))?;
    }
    if let Some(dir) = &args.completions {
        create(dir)?;
        use clap_complete::Shell;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut Cli::command(), "livemount", dir)
                .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
        }
    }
    Ok(0)
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
