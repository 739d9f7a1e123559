"""The hand-off client: tell a running `h3ops serve` that production moved, and wait for the switch.

Standard library only: the promote_to_serving task runs it on an Airflow worker that may not have
the serving stack installed. The server answers after the switch (or with why it refused), so a
refused version fails the calling task with the server's reason.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class HandoffError(RuntimeError):
    """Serving did not switch to the handed-off version; the message carries the server's reason."""


def reload(base_url: str, *, version: str, digest: str, token: str | None = None,
           timeout_s: float = 1800.0) -> dict[str, Any]:
    """POST /admin/reload; return the server's switch record, or raise HandoffError with its reason."""
    url = base_url.rstrip("/").removesuffix("/v1") + "/admin/reload"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps({"version": str(version), "digest": digest}).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            result = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            reason = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = body[:500] or e.reason
        raise HandoffError(f"serving at {url} refused version {version} ({digest}): HTTP {e.code}: {reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise HandoffError(f"serving at {url} unreachable while handing off version {version}: {e}") from None
    served = result.get("served") or {}
    if served.get("version") != str(version) or served.get("digest") != digest:
        raise HandoffError(f"serving at {url} answered but serves {served} instead of version {version} ({digest})")
    return result
