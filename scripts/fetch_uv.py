"""Fetch one uv release's manylinux wheel from PyPI, check its SHA-256, and unpack the binary.

Standard library only, so it runs on a stock system Python that refuses pip installs.

    python3 scripts/fetch_uv.py VERSION DEST
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def main(version: str, dest: Path) -> None:
    arch = ARCH.get(platform.machine().lower())
    if sys.platform != "linux" or arch is None:
        sys.exit(f"scripts/uv: no uv wheel for {sys.platform}/{platform.machine()}; install uv "
                 f"{version} yourself (https://docs.astral.sh/uv/)")
    index = "https://pypi.org/pypi/uv/json"
    with urllib.request.urlopen(index, timeout=60) as answer:
        files = json.load(answer).get("releases", {}).get(version, [])
    wheel = next((f for f in files if f["filename"].endswith(".whl")
                  and "manylinux" in f["filename"] and arch in f["filename"]), None)
    if wheel is None:
        sys.exit(f"scripts/uv: PyPI lists no manylinux {arch} wheel of uv {version}")
    # a mirror may list the file relative to the index
    with urllib.request.urlopen(urllib.parse.urljoin(index, wheel["url"]), timeout=300) as answer:
        data = answer.read()
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        sys.exit(f"scripts/uv: {wheel['filename']}: SHA-256 does not match PyPI's; not used")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".data/scripts/uv"))
        binary = archive.read(member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    partial.write_bytes(binary)
    os.chmod(partial, 0o755)
    partial.replace(dest)  # all or nothing: a later run never finds half a binary
    print(f"scripts/uv: uv {version} installed in {dest.parent}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main(sys.argv[1], Path(sys.argv[2]))
    except (OSError, ValueError, KeyError, StopIteration, zipfile.BadZipFile) as exc:
        # no network, a proxy's answer, a wheel without the binary: one line, nothing kept
        sys.exit(f"scripts/uv: cannot fetch uv from PyPI: {type(exc).__name__}: {exc}")
