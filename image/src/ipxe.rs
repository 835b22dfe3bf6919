//! iPXE scripts: the fixed entry script a boot image carries, and the per-mount script it chains to.
//!
//! The entry script asks the appliance which mount this machine boots (by MAC address); the appliance
//! answers with the per-mount script, published at an unguessable URL, which names the iSCSI target:
//! `sanboot iscsi:<server>::<port>:<lun>:<iqn>` (iPXE's SAN URI: server, protocol (empty = TCP), port,
//! LUN, target name). sanboot describes the SAN disk in an iBFT, from which the guest's initramfs logs in
//! again once the kernel runs.

/// What a per-mount script boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTarget {
    /// The address the machine reaches the iSCSI portal at.
    pub server: String,
    pub port: u16,
    pub lun: u32,
    pub target_iqn: String,
    /// The initiator name iPXE uses (and the guest was prepared with).
    pub initiator_iqn: String,
    /// Keep the SAN drive (and its iBFT) even if booting from it fails, e.g. to install onto it.
    pub keep_san: bool,
    /// CHAP user and secret iPXE logs in with (the iBFT passes them on to the guest's initramfs).
    pub chap: Option<(String, String)>,
}

/// The iPXE SAN URI of a target.
pub fn sanboot_uri(t: &BootTarget) -> String {
    format!("iscsi:{}::{}:{}:{}", t.server, t.port, t.lun, t.target_iqn)
}

/// The per-mount script.
pub fn mount_script(t: &BootTarget) -> String {
    let keep = if t.keep_san { " --keep" } else { "" };
    let chap = match &t.chap {
        Some((user, secret)) => format!("set username {user}\nset password {secret}\n"),
        None => String::new(),
    };
    format!(
        "#!ipxe\n\
         # livemount: boot {iqn} LUN {lun} over iSCSI\n\
         set initiator-iqn {initiator}\n\
         {chap}\
         echo livemount: booting {iqn} from {server}:{port}\n\
         sanboot{keep} {uri} || goto failed\n\
         :failed\n\
         echo livemount: sanboot failed; the mount may have been removed\n\
         shell\n",
        iqn = t.target_iqn,
        lun = t.lun,
        initiator = t.initiator_iqn,
        chap = chap,
        server = t.server,
        port = t.port,
        keep = keep,
        uri = sanboot_uri(t),
    )
}

/// The fixed entry script a boot image carries: configure the network, then chain to the appliance, which
/// picks the mount for this machine.
pub fn entry_script(appliance_base_url: &str) -> String {
    format!(
        "#!ipxe\n\
         # livemount entry script: one boot image serves every mount\n\
         dhcp || goto retry\n\
         chain {base}/ipxe/entry.ipxe?mac=${{net0/mac}} || goto retry\n\
         :retry\n\
         echo livemount: the appliance did not answer; retrying in 5 s\n\
         sleep 5\n\
         dhcp\n\
         chain {base}/ipxe/entry.ipxe?mac=${{net0/mac}}\n",
        base = appliance_base_url.trim_end_matches('/'),
    )
}

/// The fixed script of the EC2 iPXE image. An instance learns which mount it boots from its user-data
/// (`user_data_script`), so one image serves every mount of every appliance. EC2's DHCP may stay silent for
/// seconds after the NIC comes up, so DHCP is retried; a failed fetch says what failed and tries again;
/// everything is printed on the serial console (`GetConsoleOutput`).
///
/// The user-data is fetched with a plain GET (IMDSv1): the iPXE that Debian ships cannot send the PUT and
/// the headers that an IMDSv2 token needs. The appliance therefore launches the instance with IMDSv1
/// allowed and turns it off (HttpTokens=required) as soon as the instance has fetched its mount's script,
/// before the guest OS runs.
pub fn ec2_script() -> String {
    "#!ipxe\n\
     # livemount iPXE image for EC2: the instance's user-data names the live mount it boots\n\
     echo livemount: iPXE on EC2 (${cpuvendor} ${cpumodel})\n\
     :dhcp\n\
     ifstat ||\n\
     dhcp && goto userdata ||\n\
     echo livemount: no DHCP answer yet (${errno}); retrying in 3 s\n\
     sleep 3\n\
     goto dhcp\n\
     :userdata\n\
     route ||\n\
     chain --replace --autofree http://169.254.169.254/latest/user-data && goto done ||\n\
     echo livemount: cannot run the user-data from http://169.254.169.254/latest/user-data (${errno}); retrying in 5 s\n\
     sleep 5\n\
     goto dhcp\n\
     :done\n"
        .to_string()
}

/// The user-data of an instance that boots a mount: chain to the mount's script at `script_url`, again
/// and again until the appliance answers.
pub fn user_data_script(mount_id: &str, script_url: &str) -> String {
    format!(
        "#!ipxe\n\
         # livemount: this instance boots live mount {mount_id}\n\
         :chain\n\
         chain {script_url} && goto done ||\n\
         echo livemount: the appliance did not give mount {mount_id}'s script (${{errno}}); retrying in 5 s\n\
         sleep 5\n\
         goto chain\n\
         :done\n"
    )
}

/// What the entry URL answers when no mount is meant for the machine.
pub fn no_mount_script(mac: &str) -> String {
    format!("#!ipxe\necho livemount: no live mount is set to boot on this machine ({mac})\nexit 1\n")
}

/// A script that sends iPXE on to another URL.
pub fn chain_script(url: &str) -> String {
    format!("#!ipxe\nchain {url}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_target() {
        let t = BootTarget {
            server: "10.0.2.2".into(),
            port: 3260,
            lun: 0,
            target_iqn: "iqn.2026-11.io.livemount:mount-abc".into(),
            initiator_iqn: "iqn.2026-11.io.livemount:initiator-abc".into(),
            keep_san: true,
            chap: None,
        };
        assert_eq!(sanboot_uri(&t), "iscsi:10.0.2.2::3260:0:iqn.2026-11.io.livemount:mount-abc");
        let s = mount_script(&t);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("set initiator-iqn iqn.2026-11.io.livemount:initiator-abc\n"));
        assert!(s.contains("sanboot --keep iscsi:10.0.2.2::3260:0:iqn.2026-11.io.livemount:mount-abc"));
        assert!(!s.contains("username"), "no CHAP unless asked: {s}");
        let with_chap = mount_script(&BootTarget { chap: Some(("u1".into(), "s3cret-s3cret".into())), ..t.clone() });
        assert!(with_chap.contains("set username u1\nset password s3cret-s3cret\n"), "{with_chap}");
        let user_data = user_data_script("m1", "http://10.1.2.3:8080/ipxe/m/tok.ipxe");
        assert!(user_data.starts_with("#!ipxe\n") && user_data.contains("chain http://10.1.2.3:8080/ipxe/m/tok.ipxe"));
        assert!(ec2_script().contains("chain --replace --autofree http://169.254.169.254/latest/user-data"));
        assert!(entry_script("http://10.0.2.2:8080/")
            .contains("chain http://10.0.2.2:8080/ipxe/entry.ipxe?mac=${net0/mac}"));
    }
}
