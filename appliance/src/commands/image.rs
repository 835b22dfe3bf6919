//! `livemount image ipxe-disk`: the iPXE boot disk that machine images are made from; `livemount image
//! appliance`: the access node's own disk image.

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
    /// Build the access node's bootable Debian 12 disk: the livemount package with the daemon enabled, SSH
    /// with keys only, serial console, no password; settings on the first boot from a config drive
    /// (label CIDATA: livemount.toml, tokens.json, authorized_keys) or the instance's metadata (IMDSv2).
    /// Needs root, debootstrap and the Debian archive; takes minutes.
    Appliance {
        /// The image file to write.
        out: PathBuf,
        /// The livemount package to install (packaging/build-deb.sh builds it).
        #[arg(long)]
        deb: PathBuf,
        #[arg(long, value_enum, default_value = "raw")]
        format: ImageFormat,
        /// The disk's size.
        #[arg(long, default_value = "4G")]
        size: String,
        /// The Debian archive (default: the one this machine's apt sources name).
        #[arg(long)]
        mirror: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ImageFormat {
    Raw,
    Qcow2,
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
        ImageCmd::Appliance { out, deb, format, size, mirror } => {
            let format = match format {
                ImageFormat::Raw => image::appliance::Format::Raw,
                ImageFormat::Qcow2 => image::appliance::Format::Qcow2,
            };
            image::appliance::ApplianceImage { out, deb, format, size, mirror: mirror.as_deref() }.build()?;
            if cli.json {
                print_json(&serde_json::json!({ "image": out }));
            } else {
                println!("wrote {}", out.display());
                println!(
                    "boot it: qemu-system-x86_64 -m 2048 -nographic -drive file={},format={} -nic user,hostfwd=tcp::8443-:8443,hostfwd=tcp::3260-:3260,hostfwd=tcp::2222-:22",
                    out.display(),
                    if matches!(format, image::appliance::Format::Raw) { "raw" } else { "qcow2" }
                );
            }
            Ok(0)
        }
    }
}
