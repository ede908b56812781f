#!/usr/bin/env bash
# Checks that every Debian 12 package the build, the tests, the demo and the bench need is
# installed.  As root, installs what is missing; otherwise names it and exits 1.
# Silent when everything is present (the common case: no apt call at all).
set -euo pipefail

PKGS=(
	build-essential pkg-config
	libevent-dev libpcre2-dev libssl-dev libjansson-dev libcmocka-dev libmimalloc-dev
	libsystemd-dev
	postfix swaks curl haproxy
	python3 python3-pytest python3-pytest-xdist python3-aiosmtpd python3-prometheus-client
	openssl clang libclang-rt-14-dev valgrind
	psmisc procps iproute2 nftables jq systemd strace
	debhelper devscripts lintian dpkg-dev
)

die() {
	echo "smtptap: $*" >&2
	exit 1
}

# Prints the packages of PKGS that are not fully installed, space-separated.
missing_pkgs() {
	local p status out=()
	for p in "${PKGS[@]}"; do
		status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		[ "$status" = "install ok installed" ] || out+=("$p")
	done
	echo "${out[*]:-}"
}

command -v dpkg-query >/dev/null 2>&1 ||
	die "dpkg-query not found: this check is for Debian 12; install the equivalents of: ${PKGS[*]}"

missing=$(missing_pkgs)
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "smtptap: missing packages: $missing ; install them with: sudo apt-get install -y $missing" >&2
	exit 1
fi

echo "smtptap: installing missing packages: $missing" >&2
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -q -y -o DPkg::Lock::Timeout=120)

# A failed update is not the end: the package lists (and apt's cache) may still hold what is
# missing; the install below says so if they don't.
timeout 600 "${APT[@]}" update </dev/null >&2 ||
	echo "smtptap: apt-get update failed; trying with the package lists at hand" >&2

# Postfix first and alone: it then provides mail-transport-agent, so nothing installed after it
# can pull in another MTA (which would remove it).  "No configuration" keeps the installer
# from prompting and from setting up a running system MTA; the tests start their own daemons.
if [[ " $missing " == *" postfix "* ]]; then
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	timeout 900 "${APT[@]}" install postfix </dev/null >&2 || die "apt-get install postfix failed"
fi

missing=$(missing_pkgs)
if [ -n "$missing" ]; then
	# shellcheck disable=SC2086 # word splitting of the package list is intended
	timeout 1800 "${APT[@]}" install $missing </dev/null >&2 ||
		die "apt-get install failed for: $missing"
fi

missing=$(missing_pkgs)
[ -z "$missing" ] || die "still missing after apt-get install: $missing"
