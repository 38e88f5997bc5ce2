"""Packs the `sotto` package directory (UniFFI's module and libsotto_ffi.so) into a wheel.

    python3 make_wheel.py PACKAGE_DIR VERSION DIST_DIR

A wheel is a zip file with a `.dist-info` folder (PEP 427); written here with the standard
library so that building one needs nothing from PyPI. The wheel is for this platform only
(it holds a native library) and says so in its tag.
"""

import base64
import hashlib
import os
import sys
import sysconfig
import zipfile

NAME = "sotto"


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def main() -> None:
    package_dir, version, dist_dir = sys.argv[1:4]
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    tag = f"py3-none-{platform}"
    info = f"{NAME}-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    src = os.path.join(package_dir, NAME)
    for entry in sorted(os.listdir(src)):
        if entry == "__pycache__":
            continue
        with open(os.path.join(src, entry), "rb") as f:
            files.append((f"{NAME}/{entry}", f.read()))
    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {version}\n"
        "Summary: Sotto client library: private messages over Sotto relays\n"
        "License: AGPL-3.0-or-later\n"
        "Requires-Python: >=3.8\n"
    )
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: sotto make_wheel.py\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n"
    )
    files.append((f"{info}/METADATA", metadata.encode()))
    files.append((f"{info}/WHEEL", wheel.encode()))
    record = "".join(record_line(p, d) + "\n" for p, d in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    os.makedirs(dist_dir, exist_ok=True)
    out = os.path.join(dist_dir, f"{NAME}-{version}-{tag}.whl")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files:
            zi = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = (0o755 if path.endswith(".so") else 0o644) << 16
            z.writestr(zi, data)
    print(out)


if __name__ == "__main__":
    main()
