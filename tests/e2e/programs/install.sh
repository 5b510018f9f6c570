#!/bin/bash
# Stand-in for Claude Code's native installer, https://claude.ai/install.sh (claude-bottle test equipment).
# Same arguments, same steps, same layout as the real one; the releases come from the test server that served this
# script (@RELEASES@) instead of Anthropic's release bucket, and the "binary" is a shell script. See servers.py.
#
#   curl -fsSL http://<server>/install.sh | bash -s [stable|latest|VERSION]
set -e

TARGET="$1"
if [[ -n "$TARGET" ]] && [[ ! "$TARGET" =~ ^(stable|latest|[0-9]+\.[0-9]+\.[0-9]+(-[^[:space:]]+)?)$ ]]; then
    echo "Usage: $0 [stable|latest|VERSION]" >&2
    exit 1
fi

RELEASES="@RELEASES@"
DOWNLOAD_DIR="$HOME/.claude/downloads"

if ! command -v curl >/dev/null 2>&1; then
    echo "curl is required but not installed" >&2
    exit 1
fi
case "$(uname -s)" in
    Linux) os=linux ;;
    *) echo "Unsupported operating system: $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
    x86_64|amd64) arch=x64 ;;
    arm64|aarch64) arch=arm64 ;;
    *) echo "Unsupported architecture: $(uname -m)" >&2; exit 1 ;;
esac
platform="$os-$arch"
mkdir -p "$DOWNLOAD_DIR"

# The real script always downloads `latest` and lets `claude install TARGET` fetch TARGET; here TARGET is fetched
# directly, so the binary that installs itself is already the one asked for.
case "${TARGET:-latest}" in
    stable|latest) version=$(curl -fsSL "$RELEASES/${TARGET:-latest}") ;;
    *) version="$TARGET" ;;
esac
manifest=$(curl -fsSL "$RELEASES/$version/manifest.json")
if [[ $manifest =~ \"$platform\"[^}]*\"checksum\"[[:space:]]*:[[:space:]]*\"([a-f0-9]{64})\" ]]; then
    checksum="${BASH_REMATCH[1]}"
else
    echo "Platform $platform not found in manifest" >&2
    exit 1
fi

binary_path="$DOWNLOAD_DIR/claude-$version-$platform"
if ! curl -fsSL -o "$binary_path" "$RELEASES/$version/$platform/claude"; then
    echo "Download failed" >&2
    rm -f "$binary_path"
    exit 1
fi
if [ "$(sha256sum "$binary_path" | cut -d' ' -f1)" != "$checksum" ]; then
    echo "Checksum verification failed" >&2
    rm -f "$binary_path"
    exit 1
fi
chmod +x "$binary_path"

echo "Setting up Claude Code..."
"$binary_path" install ${TARGET:+"$TARGET"}
rm -f "$binary_path"

echo ""
echo "✅ Installation complete!"
echo ""
