"""A self-signed certificate for localhost, for the local cluster's HTTPS + HTTP/2 port."""

import os
import subprocess
from pathlib import Path

from launch.processes import find_binary


def dev_certificate(folder: Path) -> dict[str, str]:
    """Made once in ``folder`` with openssl; the nginx template's variables naming it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if not cert.exists():
        folder.mkdir(parents=True, exist_ok=True)
        openssl = [find_binary("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30"]
        names = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        subprocess.run(
            [*openssl, "-keyout", str(key), "-out", str(cert), *names],
            check=True,
            capture_output=True,
        )
        os.chmod(key, 0o644)  # nginx's workers run as nobody when started as root
    return {"STREAMFAN_TLS_CERT": str(cert), "STREAMFAN_TLS_KEY": str(key)}
