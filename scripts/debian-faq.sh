#!/usr/bin/env bash
# Unpacks the Debian FAQ (Debian package debian-faq) into eval/debian-faq/kb: the knowledge base
# of the held-out question set (`make eval-heldout`). The pages are not kept in the repository;
# the table of contents (index.en.html) is left out, as it only repeats the questions.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=eval/debian-faq/kb
if [ -f "$dest/basic-defs.en.html" ]; then exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download debian-faq >/dev/null 2>&1 || { apt-get update -qq && apt-get download debian-faq >/dev/null; })
dpkg-deb -x "$tmp"/debian-faq_*.deb "$tmp/root"
mkdir -p "$dest"
for f in "$tmp"/root/usr/share/doc/debian/FAQ/*.en.html; do
  [ "$(basename "$f")" = index.en.html ] || cp "$f" "$dest/"
done
cp "$tmp"/root/usr/share/doc/debian-faq/copyright "$dest/COPYRIGHT.txt.license"
echo "Debian FAQ unpacked into $dest" >&2
