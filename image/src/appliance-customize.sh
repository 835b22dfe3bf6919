#!/bin/bash
# Makes the Debian disk at ROOT (debian-disk.sh) a livemount access node: the livemount package, SSH with
# keys only, DHCP on the first NIC, and the first-boot settings service. Run by `livemount image appliance`
# as debian-disk.sh's DISK_CUSTOMIZE hook.
#
#   appliance-customize.sh ROOT        (APPLIANCE_DEB: the livemount .deb to install)
set -euo pipefail
MNT=${1:?usage: $0 ROOT}
DEB=${APPLIANCE_DEB:?APPLIANCE_DEB: the livemount package to install}

in_root() { chroot "$MNT" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

# Nothing may start during the build (there is no systemd running in the root; the package's scripts would
# try): policy-rc.d tells invoke-rc.d and deb-systemd-invoke to leave services alone.
printf '#!/bin/sh\nexit 101\n' >"$MNT/usr/sbin/policy-rc.d"
chmod 755 "$MNT/usr/sbin/policy-rc.d"
cp -- "$DEB" "$MNT/tmp/livemount.deb"
# The package with what it recommends (qemu-utils reads qcow2, vmdk, vhdx and vdi disks; the iPXE tools build
# the boot disk of `cloud image ipxe`), then SSH and curl (the first boot asks the instance metadata).
in_root apt-get install -y -q -o APT::Install-Recommends=true /tmp/livemount.deb
in_root apt-get install -y -q --no-install-recommends openssh-server curl ca-certificates
rm -f "$MNT/tmp/livemount.deb" "$MNT/usr/sbin/policy-rc.d"

# The first NIC by DHCP (net.ifnames=0 on the command line makes it eth0 on every hypervisor): `auto`, so
# that network-online.target waits for it and the first-boot service can ask the instance metadata.
cat >"$MNT/etc/network/interfaces.d/eth0" <<'EOF'
auto eth0
iface eth0 inet dhcp
EOF

# SSH: keys only, host keys made on the first boot (every instance its own).
rm -f "$MNT"/etc/ssh/ssh_host_*
mkdir -p "$MNT/etc/ssh/sshd_config.d"
cat >"$MNT/etc/ssh/sshd_config.d/livemount.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF

install -D -m 755 /dev/stdin "$MNT/usr/lib/livemount/first-boot" <<'EOF'
#!/bin/bash
# The access node's first boot: settings from a config drive (on premises) or from the instance's metadata
# through IMDSv2 (in AWS), then host keys. Runs once (livemount-first-boot.service).
#
# A config drive is a file system labelled CIDATA or config-2 holding any of:
#   livemount.toml    the daemon's configuration (/etc/livemount/livemount.toml)
#   tokens.json       remote API tokens, as `livemount token` keeps them (only SHA-256 digests)
#   authorized_keys   SSH keys for root
# In AWS the user-data is the configuration, the launch key pair gives root's SSH key, and the instance's
# private address becomes the advertised address unless the configuration sets one.
set -uo pipefail
log() { echo "livemount-first-boot: $*"; }
CONFIG=/etc/livemount/livemount.toml

take_keys() {
    install -d -m 700 /root/.ssh
    cat "$1" >>/root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
}

from_config_drive() {
    local dev dir
    dev=$(blkid -t LABEL=CIDATA -o device 2>/dev/null | head -n1)
    [[ -n $dev ]] || dev=$(blkid -t LABEL=cidata -o device 2>/dev/null | head -n1)
    [[ -n $dev ]] || dev=$(blkid -t LABEL=config-2 -o device 2>/dev/null | head -n1)
    [[ -n $dev ]] || return 1
    dir=$(mktemp -d)
    mount -o ro "$dev" "$dir" || { rmdir "$dir"; return 1; }
    log "settings from the config drive $dev"
    [[ -f $dir/livemount.toml ]] && install -m 644 "$dir/livemount.toml" "$CONFIG"
    [[ -f $dir/tokens.json ]] && install -D -m 600 "$dir/tokens.json" /var/lib/livemount/tokens.json
    [[ -f $dir/authorized_keys ]] && take_keys "$dir/authorized_keys"
    umount "$dir"
    rmdir "$dir"
}

from_imds() {
    local imds=http://169.254.169.254 token tmp
    token=$(curl -sf --max-time 2 -X PUT "$imds/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || return 1
    get() { curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$imds/latest/$1"; }
    log "settings from the instance metadata (IMDSv2)"
    tmp=$(mktemp)
    if get user-data >"$tmp" && [[ -s $tmp ]]; then install -m 644 "$tmp" "$CONFIG"; fi
    if get meta-data/public-keys/0/openssh-key >"$tmp" && [[ -s $tmp ]]; then take_keys "$tmp"; fi
    if ! grep -qE '^[[:space:]]*advertise[[:space:]]*=' "$CONFIG" && get meta-data/local-ipv4 >"$tmp"; then
        # A top-level key must come before the first [table]: put it first.
        { echo "advertise = \"$(cat "$tmp")\""; cat "$CONFIG"; } >"$tmp.new" && install -m 644 "$tmp.new" "$CONFIG"
        rm -f "$tmp.new"
    fi
    rm -f "$tmp"
}

from_config_drive || from_imds || log "no config drive and no instance metadata: the packaged defaults stay"
ssh-keygen -A
install -d /var/lib/livemount
touch /var/lib/livemount/first-boot.done
EOF

cat >"$MNT/etc/systemd/system/livemount-first-boot.service" <<'EOF'
[Unit]
Description=livemount access node: first-boot settings (config drive or instance metadata)
Wants=network-online.target
After=network-online.target
Before=livemount.service ssh.service
ConditionPathExists=!/var/lib/livemount/first-boot.done

[Service]
Type=oneshot
ExecStart=/usr/lib/livemount/first-boot
RemainAfterExit=yes
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable livemount-first-boot.service ssh.service livemount.service
