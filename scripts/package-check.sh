#!/usr/bin/env bash
# Builds the Debian package from a copy of the working tree in a temporary directory
# (dpkg-buildpackage writes the .deb next to the tree it builds: nothing lands beside the
# repository), runs lintian (errors fail the check, warnings are printed), unpacks the .deb
# with `dpkg -x` into a scratch root and checks what it holds.  KEEP=1 keeps the directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
	echo "package-check: $*" >&2
	exit 1
}

for tool in dpkg-buildpackage dh lintian; do
	command -v "$tool" >/dev/null || die "$tool not found: run make deps (as root)"
done

tmp=$(mktemp -d /tmp/smtptap-pkg.XXXXXX)
[ "${KEEP:-0}" = 1 ] && echo "package-check: keeping $tmp" || trap 'rm -rf "$tmp"' EXIT

# The tracked and the new (not ignored) files as they are now: no build output.
mkdir "$tmp/smtptap"
git ls-files -z --cached --others --exclude-standard |
	while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done |
	tar --null -T - -cf - | tar -xf - -C "$tmp/smtptap"

(cd "$tmp/smtptap" && dpkg-buildpackage -b -uc -us -j2 >"$tmp/build.log" 2>&1) ||
	{ tail -40 "$tmp/build.log" >&2; die "dpkg-buildpackage failed (log above)"; }
deb=$(ls "$tmp"/smtptap_*.deb)

# lintian: E: lines fail, W: and the rest are shown.
lintian --tag-display-limit 0 "$deb" >"$tmp/lintian.log" 2>&1 || true
cat "$tmp/lintian.log"
! grep -q '^E: ' "$tmp/lintian.log" || die "lintian reports errors"

root="$tmp/root"
dpkg -x "$deb" "$root"
fail=0
check() { # what, then a test command
	local what=$1
	shift
	if "$@"; then echo "ok: $what"; else echo "FAIL: $what" >&2; fail=1; fi
}
check "binary /usr/sbin/smtptap runs" "$root/usr/sbin/smtptap" --version
check "man page" test -f "$root/usr/share/man/man1/smtptap.1.gz"
unit=$root/lib/systemd/system/smtptap.service
check "systemd unit" grep -q '^ExecStart=/usr/sbin/smtptap --config /etc/smtptap/smtptap.conf' "$unit"
check "configuration file" grep -q '^user smtptap$' "$root/etc/smtptap/smtptap.conf"
check "configuration is a conffile" sh -c "dpkg-deb -e '$deb' '$tmp/ctl' &&
	grep -qx /etc/smtptap/smtptap.conf '$tmp/ctl/conffiles'"
check "the example configuration" test -f "$root/usr/share/doc/smtptap/smtptap.conf.example"
check "log directory" test -d "$root/var/log/smtptap"
check "postinst creates the user and owns the log directory" grep -q \
	'adduser --system' "$tmp/ctl/postinst"
check "postinst: log directory 0750" grep -q 'chmod 0750 /var/log/smtptap' "$tmp/ctl/postinst"
check "logrotate snippet signals by the pid file" grep -q 'kill -HUP "$(cat /run/smtptap/smtptap.pid)"' \
	"$root/etc/logrotate.d/smtptap"
check "the configuration parses (check mode)" sh -c "'$root/usr/sbin/smtptap' --check-config \
	-c '$root/etc/smtptap/smtptap.conf' --upstream 127.0.0.1:25 --log-dir '$tmp/logs' \
	--user root >/dev/null"
# (The unit itself is checked with systemd-analyze verify in tests/integration/test_service.py.)
[ "$fail" = 0 ] || die "package contents are wrong"
echo "package-check: $(basename "$deb") ok"
