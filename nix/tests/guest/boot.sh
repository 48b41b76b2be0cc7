#!/usr/bin/env bash
# Boot a real systemd (Debian bookworm, systemd 252) as PID 1 in a QEMU guest
# and run a payload inside it as a systemd unit.
#
#   nix/tests/guest/boot.sh --payload DIR [--cache DIR] [--timeout SECONDS]
#                           [--packages "pkg ..."] [--append "cmdline ..."]
#                           [--log FILE] [--quiet]
#
# DIR/test.sh (executable) runs inside the guest as payload-test.service,
# after multi-user.target, as root, with DIR copied to /payload. Its exit code
# is this script's exit code. 124 = timeout (qemu killed), 125 = the guest did
# not boot or the payload never reported (see the console log).
# DIR/setup.sh, if present, runs on the HOST before the disk image is made,
# with the guest root file system as $1 (and $GUEST_ROOTFS); /proc, /sys, /dev
# and resolv.conf are prepared there, so `chroot "$1" apt-get install -y X`
# works. Prefer --packages for Debian packages: those are part of the cached
# base image.
#
# Host needs: debootstrap, qemu-system-x86, e2fsprogs (mkfs.ext4 -d), root.
# The guest kernel and initrd come from linux-image-amd64 installed INTO the
# guest root by debootstrap, so nothing on the host's /boot matters.
# Without --cache everything goes to a temporary folder that is deleted at the
# end (a clean machine builds from nothing). With --cache DIR the base root
# file system is kept in DIR/base-<key> and reused while its key (package
# list + BASE_VERSION) is unchanged; per-run files are always deleted.
#
# --timeout bounds the VM run (boot, payload, power-off); the image build
# before it is not counted. A payload exiting 124 or 125 itself is
# indistinguishable from a harness timeout / boot failure: avoid those codes.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# GUEST_ACCEL (default tcg; /dev/kvm does not work nested here),
# GUEST_MEM_MB (2048), GUEST_SMP (2), GUEST_DISK_EXTRA_MB (2048, free space
# on the sparse root disk).
set -euo pipefail

BASE_VERSION=1
BASE_PACKAGES="systemd systemd-sysv udev dbus libnss-systemd libpam-systemd iproute2 procps util-linux coreutils kmod linux-image-amd64 initramfs-tools zstd"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ACCEL=${GUEST_ACCEL:-tcg}
MEM_MB=${GUEST_MEM_MB:-2048}
SMP=${GUEST_SMP:-2}
DISK_EXTRA_MB=${GUEST_DISK_EXTRA_MB:-2048}

payload="" cache="" timeout=1800 extra_packages="" extra_append="" logfile="" quiet=0
usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --payload) payload=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --packages) extra_packages=$2; shift 2 ;;
    --append) extra_append=$2; shift 2 ;;
    --log) logfile=$2; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "boot.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[ -n "$payload" ] || { echo "boot.sh: --payload DIR is required" >&2; exit 2; }
[ -x "$payload/test.sh" ] || { echo "boot.sh: $payload/test.sh missing or not executable" >&2; exit 2; }
case "$timeout" in ''|*[!0-9]*) echo "boot.sh: --timeout must be whole seconds" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "boot.sh: must run as root (debootstrap, chroot)" >&2; exit 2; }
for tool in debootstrap qemu-system-x86_64 mkfs.ext4 timeout; do
  command -v "$tool" >/dev/null || { echo "boot.sh: $tool not found (apt-get install debootstrap qemu-system-x86 e2fsprogs)" >&2; exit 2; }
done
payload=$(cd "$payload" && pwd)

t_start=$SECONDS
phase_start=$SECONDS
phase() { # phase NAME: report the time of the phase that just ended
  echo "boot.sh: [time] $1: $((SECONDS - phase_start)) s"
  phase_start=$SECONDS
}

# ---------------------------------------------------------------- work dirs
tmp_cache=0
if [ -z "$cache" ]; then
  cache=$(mktemp -d "${TMPDIR:-/tmp}/locket-guest.XXXXXX")
  tmp_cache=1
fi
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
run=$(mktemp -d "$cache/run.XXXXXX")

# Unmount everything below a folder, deepest first; never rm across a mount.
umount_below() {
  local d=$1 m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$d" 'index($2, d "/") == 1 || $2 == d { print $2 }' /proc/mounts | sort -r)
}
safe_rm() {
  local d=$1
  [ -e "$d" ] || return 0
  umount_below "$d"
  if awk -v d="$d" 'index($2, d "/") == 1 || $2 == d { found = 1 } END { exit !found }' /proc/mounts; then
    echo "boot.sh: NOT deleting $d: still has mounts below it" >&2
    return 1
  fi
  rm -rf --one-file-system "$d"
}
cleanup() {
  local rc=$?
  safe_rm "$run" || true
  [ -n "${base_tmp:-}" ] && { safe_rm "$base_tmp" || true; }
  if [ "$tmp_cache" = 1 ]; then safe_rm "$cache" || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prepare / tear down a root file system for chroot use.
chroot_prepare() {
  local r=$1
  mount -t proc proc "$r/proc"
  mount -t sysfs sysfs "$r/sys"
  mount --bind /dev "$r/dev"
  mount --bind /dev/pts "$r/dev/pts"
  [ -e "$r/etc/resolv.conf" ] && mv "$r/etc/resolv.conf" "$r/etc/resolv.conf.harness-orig" || true
  cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
  printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
}
chroot_teardown() {
  local r=$1
  rm -f "$r/usr/sbin/policy-rc.d" "$r/etc/resolv.conf"
  [ -e "$r/etc/resolv.conf.harness-orig" ] && mv "$r/etc/resolv.conf.harness-orig" "$r/etc/resolv.conf" || true
  umount_below "$r"
}

# ---------------------------------------------------------------- 1. base
all_packages=$(echo "$BASE_PACKAGES $extra_packages" | tr ' ,' '\n\n' | sed '/^$/d' | sort -u | paste -sd, -)
key=$(printf '%s\n' "$BASE_VERSION" "$MIRROR" "$all_packages" | sha256sum | cut -c1-16)
base="$cache/base-$key"
if [ -f "$base/.complete" ]; then
  echo "boot.sh: reusing base root file system $base"
else
  echo "boot.sh: building base root file system (debootstrap bookworm minbase: $all_packages)"
  base_tmp="$cache/base-$key.tmp.$$"
  safe_rm "$base_tmp"
  mkdir -p "$base_tmp" "$cache/debs"
  # --cache-dir keeps downloaded .debs for a rebuild with another --packages.
  if ! debootstrap --variant=minbase --include="$all_packages" --cache-dir="$cache/debs" \
      bookworm "$base_tmp/rootfs" "$MIRROR" > "$run/debootstrap.log" 2>&1; then
    tail -n 40 "$run/debootstrap.log" >&2
    echo "boot.sh: debootstrap failed (full log above is the tail of $run/debootstrap.log)" >&2
    exit 125
  fi
  umount_below "$base_tmp/rootfs"
  phase "debootstrap"

  r="$base_tmp/rootfs"
  echo "locket-guest" > "$r/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 locket-guest\n::1 localhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
  # A fixed machine-id: not a "first boot", so systemd-firstboot does not prompt.
  echo "4c6f636b657447756573744861726e65" > "$r/etc/machine-id"
  # Nothing in the guest needs these; timers would only add noise.
  for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
           fstrim.timer getty@tty1.service serial-getty@ttyS0.service getty.target \
           systemd-timesyncd.service systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
  done
  # Size: documentation, and kernel modules no VM of ours loads.
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/var/cache/apt/*.bin \
         "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*_Packages
  for m in "$r"/lib/modules/*/kernel; do
    rm -rf "$m"/drivers/{gpu,media,net/wireless,net/ethernet,infiniband,staging,iio,usb,bluetooth,sound,isdn,hid,input/joystick,input/touchscreen,mmc,mtd,nfc,platform/x86,scsi/*/} "$m"/sound "$m"/net/{bluetooth,wireless,mac80211}
  done
  for v in "$r"/lib/modules/*; do chroot "$r" depmod "$(basename "$v")"; done
  ker=$(ls "$r"/boot/vmlinuz-* | sort -V | tail -n1)
  ird="$r/boot/initrd.img-${ker##*/vmlinuz-}"
  [ -f "$ker" ] && [ -f "$ird" ] || { echo "boot.sh: no kernel/initrd in the guest's /boot" >&2; exit 125; }
  cp "$ker" "$base_tmp/vmlinuz"
  cp "$ird" "$base_tmp/initrd.img"
  touch "$base_tmp/.complete"
  if [ -f "$base/.complete" ]; then # a concurrent run with the same --cache won
    safe_rm "$base_tmp"
  else
    safe_rm "$base"
    mv "$base_tmp" "$base"
  fi
  base_tmp=""
  phase "configure base"
fi

# ---------------------------------------------------------------- 2. per-run root
nonce=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
root_uuid=$(cat /proc/sys/kernel/random/uuid)
r="$run/rootfs"
cp -a "$base/rootfs" "$r"
# The root disk is found by UUID: virtio disks probe in parallel, so /dev/vda
# may be the small result disk.
printf 'UUID=%s / ext4 rw,relatime 0 1\n' "$root_uuid" > "$r/etc/fstab"
cp -a "$payload" "$r/payload"
mkdir -p "$r/usr/local/lib/guest-harness"

cat > "$r/usr/local/lib/guest-harness/run-payload" <<EOF
#!/bin/bash
# Runs /payload/test.sh, reports its exit code on the result disk and on the
# console, then powers the guest off.
nonce=$nonce
EOF
cat >> "$r/usr/local/lib/guest-harness/run-payload" <<'EOF'
report() {
  local line="PAYLOAD-EXIT-$nonce=$1"
  local dev=/dev/disk/by-id/virtio-harness-result
  if [ ! -b "$dev" ]; then # no udev link: the 1 MiB virtio disk
    for d in /sys/block/vd*; do [ "$(cat "$d/size")" = 2048 ] && dev=/dev/${d##*/}; done
  fi
  { printf '%s\n' "$line"; head -c 512 /dev/zero; } | head -c 512 | dd of="$dev" bs=512 count=1 conv=fsync status=none || true
  echo "$line"
  echo "$line" > /dev/console || true
}
echo "HARNESS-PAYLOAD-START uptime=$(cut -d' ' -f1 /proc/uptime)s"
systemd-analyze time 2>/dev/null | head -n1 || true
cd /payload
rc=0
/payload/test.sh || rc=$?
echo "HARNESS-PAYLOAD-END rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s"
report "$rc"
sync
systemctl poweroff --no-block
EOF

cat > "$r/usr/local/lib/guest-harness/boot-failed" <<EOF
#!/bin/bash
# Replaces emergency/rescue shells: show why, report, power off.
echo "HARNESS-BOOT-FAILED (\$1)"
systemctl --no-pager --failed || true
echo "---- systemd (PID 1) warnings and errors:"
journalctl -b --no-pager -o short-monotonic -p warning _PID=1 || true
echo "---- errors from any source:"
journalctl -b --no-pager -o short-monotonic -p err || true
sleep 2 # let journald forward the above to the console first
echo "PAYLOAD-BOOTFAIL-$nonce" > /dev/console
systemctl poweroff --force
EOF
chmod 755 "$r"/usr/local/lib/guest-harness/*

cat > "$r/etc/systemd/system/payload-test.service" <<'EOF'
[Unit]
Description=Guest harness payload (/payload/test.sh)
After=multi-user.target

[Service]
# Type=exec, not oneshot: a oneshot would keep its start job pending, so the
# boot would never "finish" and `systemctl is-system-running --wait` inside the
# payload would wait forever.
Type=exec
ExecStart=/usr/local/lib/guest-harness/run-payload
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
EOF
mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
ln -sf ../payload-test.service "$r/etc/systemd/system/multi-user.target.wants/payload-test.service"
for u in emergency rescue; do
  mkdir -p "$r/etc/systemd/system/$u.service.d"
  printf '[Service]\nExecStartPre=\nExecStart=\nExecStart=/usr/local/lib/guest-harness/boot-failed %s\nStandardOutput=journal+console\nStandardError=journal+console\nStandardInput=null\n' "$u" \
    > "$r/etc/systemd/system/$u.service.d/harness.conf"
done

if [ -f "$payload/setup.sh" ]; then
  echo "boot.sh: running $payload/setup.sh $r"
  chroot_prepare "$r"
  set +e
  GUEST_ROOTFS="$r" bash "$payload/setup.sh" "$r"
  src=$?
  set -e
  chroot_teardown "$r"
  [ "$src" = 0 ] || { echo "boot.sh: setup.sh failed with $src" >&2; exit 125; }
fi

# ---------------------------------------------------------------- 3. disk images
used_mb=$(du -sm "$r" | cut -f1)
size_mb=$((used_mb + used_mb / 5 + DISK_EXTRA_MB))
mkfs.ext4 -q -F -L guestroot -U "$root_uuid" -d "$r" -E root_owner=0:0,lazy_itable_init=1 "$run/root.img" "${size_mb}M" >/dev/null
truncate -s 1M "$run/result.img"
safe_rm "$r"
phase "root + payload + image (${used_mb} MB used, ${size_mb} MB sparse disk)"

# ---------------------------------------------------------------- 4. boot
cmdline="console=ttyS0,115200 root=UUID=$root_uuid rootfstype=ext4 rw panic=1 fsck.mode=skip"
cmdline+=" systemd.unit=multi-user.target systemd.show_status=1 systemd.crash_reboot=1"
cmdline+=" systemd.status_unit_format=name SYSTEMD_COLORS=0"
cmdline+=" loglevel=4 mitigations=off audit=0 random.trust_cpu=on net.ifnames=0"
[ -n "$extra_append" ] && cmdline+=" $extra_append"
log=${logfile:-$run/console.log}
: > "$log"
echo "boot.sh: booting (accel=$ACCEL, ${MEM_MB} MB, $SMP CPUs, timeout ${timeout}s)"
boot_start=$SECONDS
set +e
timeout -k 10 "$timeout" qemu-system-x86_64 \
    -accel "$ACCEL" -cpu max -m "$MEM_MB" -smp "$SMP" \
    -display none -monitor none -serial stdio -no-reboot \
    -kernel "$base/vmlinuz" -initrd "$base/initrd.img" -append "$cmdline" \
    -drive "file=$run/root.img,format=raw,if=virtio,cache=unsafe,discard=unmap" \
    -drive "file=$run/result.img,format=raw,if=none,id=result" \
    -device virtio-blk-pci,drive=result,serial=harness-result \
    -device virtio-rng-pci -nic none \
    < /dev/null 2>&1 \
  | while IFS= read -r line; do
      line=${line%$'\r'}
      printf '%s\n' "$line" >> "$log"
      case "$line" in
        *HARNESS-PAYLOAD-START*) echo $((SECONDS - boot_start)) > "$run/t_payload" ;;
      esac
      [ "$quiet" = 1 ] || printf '[guest %4ds] %s\n' $((SECONDS - boot_start)) "$line"
    done
qrc=${PIPESTATUS[0]}
set -e
boot_secs=$((SECONDS - boot_start))
phase_start=$SECONDS

# ---------------------------------------------------------------- 5. verdict
rc=""
res=$(head -c 512 "$run/result.img" | tr -d '\0' | grep -a -o "PAYLOAD-EXIT-$nonce=[0-9]*" | head -n1 || true)
if [ -z "$res" ]; then
  res=$(grep -a -o "PAYLOAD-EXIT-$nonce=[0-9]*" "$log" | head -n1 || true)
  [ -n "$res" ] && echo "boot.sh: result disk empty, exit code taken from the console"
fi
[ -n "$res" ] && rc=${res##*=}
if [ -f "$run/t_payload" ]; then
  echo "boot.sh: [time] boot to payload start: $(cat "$run/t_payload") s"
fi
echo "boot.sh: [time] boot + payload + poweroff: ${boot_secs} s"
if [ -z "$rc" ]; then
  if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    why="timeout after ${timeout}s (qemu killed)"; rc=124
  elif grep -aq "PAYLOAD-BOOTFAIL-$nonce" "$log"; then
    why="boot failed (emergency/rescue mode)"; rc=125
  else
    why="guest stopped without reporting (qemu exit $qrc: kernel panic, initramfs failure or crash)"; rc=125
  fi
  [ "$quiet" = 1 ] && { echo "---- console log (last 200 lines) ----"; tail -n 200 "$log"; echo "----"; }
  echo "boot.sh: $why"
elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "boot.sh: payload reported $rc but the guest did not power off before the timeout"
fi
[ "$quiet" = 1 ] && [ "$rc" != 0 ] && [ -n "$res" ] && { echo "---- console log (last 200 lines) ----"; tail -n 200 "$log"; echo "----"; }
echo "boot.sh: payload exit code $rc; [time] total wall time: $((SECONDS - t_start)) s"
exit "$rc"
