#!/usr/bin/env bash
# Re-fetches the web console's JavaScript dependencies from the npm registry at their pinned
# versions, checks each tarball's SHA-256, and copies the files the console loads (with their
# licences) into src/gureum/api/ui/vendor/. Not part of `make`: the files are committed, so
# neither the user's machine nor CI needs npm or a build step (docs/console.md says why).
# Run it to move a pin: change the version and its checksum below, run, review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=src/gureum/api/ui/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# package@version  sha256 of its npm tarball
pins=(
  "@xterm/xterm@6.0.0 908e66e04af6c8dc6b00dd3b54de088e2e81e5ed866284fd6c2fb3c2d1c7a3f6"
  "@xterm/addon-fit@0.11.0 26003b4517a132b64e4ff228fd88a5fda3fff5e606c76093f6dcff772e9ecec0"
)
for pin in "${pins[@]}"; do
  read -r spec sum <<<"$pin"
  file=$(cd "$work" && npm pack --silent "$spec")
  echo "$sum  $work/$file" | sha256sum -c --quiet
  mkdir -p "$work/${file%.tgz}" && tar -xzf "$work/$file" -C "$work/${file%.tgz}"
done
cp "$work"/xterm-xterm-6.0.0/package/lib/xterm.js "$dest/xterm.js"
cp "$work"/xterm-xterm-6.0.0/package/css/xterm.css "$dest/xterm.css"
cp "$work"/xterm-xterm-6.0.0/package/LICENSE "$dest/LICENSE.xterm"
cp "$work"/xterm-addon-fit-0.11.0/package/lib/addon-fit.js "$dest/addon-fit.js"
cp "$work"/xterm-addon-fit-0.11.0/package/LICENSE "$dest/LICENSE.addon-fit"
echo "vendored into $dest"
