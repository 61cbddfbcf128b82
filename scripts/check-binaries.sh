#!/usr/bin/env bash
# Fails when a tracked file is a compiled program (ELF): build outputs
# belong in bin/ or the tools cache, never in git. Scripts are fine.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

found=()
while IFS= read -r -d '' f; do
  [[ -f "$f" ]] || continue
  # The first four bytes of every ELF file: 0x7f 'E' 'L' 'F'.
  if [[ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" == "7f454c46" ]]; then
    found+=("$f ($(du -h "$f" | cut -f1))")
  fi
done < <(git ls-files -z)
if (( ${#found[@]} )); then
  printf 'error: compiled binaries are tracked by git (git rm --cached them and add them to .gitignore):\n' >&2
  printf '  %s\n' "${found[@]}" >&2
  exit 1
fi
log "no compiled binaries tracked"
