//! `livemount image ipxe-disk`: the iPXE boot disk that machine images are made from.

use std::path::PathBuf;

use clap::Subcommand;

use crate::cli::Cli;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build a small bootable disk image that starts iPXE with the appliance's entry script; one image boots
    /// every live mount (the appliance picks the mount by the machine's MAC address).
    IpxeDisk {
        /// The image file to write.
        out: PathBuf,
        /// The appliance's HTTP base URL as machines reach it (as `serve --http` and `--advertise` give it).
        #[arg(long)]
        appliance_url: String,
    },
}

pub fn run(cli: &Cli, cmd: &ImageCmd) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::IpxeDisk { out, appliance_url } => {
            let script = image::ipxe::entry_script(appliance_url);
            image::bootdisk::build(out, &script)?;
            if cli.json {
                print_json(&serde_json::json!({ "image": out, "entry_script": script }));
            } else {
                println!(
                    "wrote {} (iPXE chains to {}/ipxe/entry.ipxe)",
                    out.display(),
                    appliance_url.trim_end_matches('/')
                );
            }
            Ok(0)
        }
    }
}
