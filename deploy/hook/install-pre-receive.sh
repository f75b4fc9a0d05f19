#!/usr/bin/env bash
# Installs leakscan's push protection into a bare repository on a git host
# that leakscan's gateway does not serve from a repos root (for those, the
# gateway installs it itself when the hook is switched on).
#
#   install-pre-receive.sh REPO.git GATEWAY_URL PROJECT SLUG
#
# The hook token comes from LEAKSCAN_HOOK_TOKEN (make one, as a system
# administrator, with `curl -u admin -X POST GATEWAY_URL/rest/security/latest/hook/tokens`).
# The hook then asks the gateway whether it is switched on for PROJECT/SLUG
# (PUT .../projects/PROJECT/repos/SLUG/settings/hooks/<key>/enabled).
# LEAKSCAN_BIN names the leakscan executable (default: the one on PATH).
set -euo pipefail

if [[ $# -ne 4 ]]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
repo=$1 gateway=$2 project=$3 slug=$4
: "${LEAKSCAN_HOOK_TOKEN:?set LEAKSCAN_HOOK_TOKEN to a hook token}"
leakscan=${LEAKSCAN_BIN:-$(command -v leakscan || true)}
[[ -x $leakscan ]] || { echo "leakscan not found: set LEAKSCAN_BIN" >&2; exit 2; }
git_dir=$(git -C "$repo" rev-parse --absolute-git-dir)
hook=$git_dir/hooks/pre-receive
if [[ -e $hook ]] && ! grep -q '# leakscan push protection' "$hook"; then
    echo "$hook exists and is not leakscan's: chain it by hand" >&2
    exit 1
fi
mkdir -p "$git_dir/hooks"
umask 077
cat > "$git_dir/hooks/leakscan-hook.conf" <<CONF
# leakscan push protection (installed by install-pre-receive.sh)
gateway = $gateway
project = $project
repository = $slug
token = $LEAKSCAN_HOOK_TOKEN
CONF
umask 022
cat > "$hook" <<HOOK
#!/bin/sh
# leakscan push protection: installed by install-pre-receive.sh.
exec '$leakscan' hook pre-receive --config "\$(dirname "\$0")/leakscan-hook.conf"
HOOK
chmod 755 "$hook"
git --git-dir "$git_dir" config receive.advertisePushOptions true
echo "installed: $hook"
