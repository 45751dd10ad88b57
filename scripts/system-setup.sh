#!/usr/bin/env bash
# Make sure the system tools a make target needs are here (scripts/system-packages.txt). As root, a
# missing one is installed with apt-get; as anyone else this stops at once with one line that says
# what is missing and the command that installs it all. Silent when nothing is missing.
#
#   scripts/system-setup.sh run|test|bench [--check]    (--check: report, never install)
#   SYSTEM_PACKAGES=FILE reads another list (the tests use it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list=${SYSTEM_PACKAGES:-$here/system-packages.txt}
group=${1:?usage: system-setup.sh run|test|bench [--check]}
mode=${2:-install}
# pgbouncer and the cluster tools live in sbin, which a user's PATH may leave out.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

case $group in
  run) wanted=(run) ;;
  test) wanted=(run test) ;;
  bench) wanted=(run test bench) ;;
  *) echo "system-setup.sh: unknown group '$group' (run, test or bench)" >&2; exit 2 ;;
esac

present() {
  local tool=$1
  if [[ $tool == */* ]]; then
    command -v "${tool%%/*}" >/dev/null && "${tool%%/*}" -c "import ${tool#*/}" >/dev/null 2>&1
  else
    command -v "$tool" >/dev/null
  fi
}

tools=() packages=()
while read -r tool package needed_by _; do
  [[ -z $tool || $tool == \#* ]] && continue
  [[ " ${wanted[*]} " == *" $needed_by "* ]] || continue
  present "$tool" && continue
  tools+=("$tool")
  [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
done <"$list"
((${#tools[@]})) || exit 0

install="apt-get install -y --no-install-recommends ${packages[*]}"
if [[ $mode == --check || $(id -u) -ne 0 ]]; then
  echo "missing ${tools[*]}: install them with  sudo $install  (Debian's packages), then run make $group again" >&2
  exit 1
fi
echo "installing ${packages[*]} for ${tools[*]} (Debian's packages, scripts/system-packages.txt)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
for tool in "${tools[@]}"; do
  present "$tool" || { echo "system-setup.sh: $tool is still missing after installing ${packages[*]}" >&2; exit 1; }
done
