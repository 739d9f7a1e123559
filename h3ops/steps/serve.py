"""Hand production to a running `h3ops serve`: it switches (or refuses, and this step fails with why)."""
from __future__ import annotations

import os

from h3ops.config import PipelineConfig
from h3ops.steps import step
from h3ops.steps.common import registry

SERVING_URL_ENV, SERVING_TOKEN_ENV = "H3OPS_SERVING_URL", "H3OPS_SERVING_ADMIN_TOKEN"


@step("serving_reload")
def serving_reload(cfg: PipelineConfig, url: str | None = None, token: str | None = None,
                   timeout_s: float = 1800.0) -> dict:
    """Tell serving at `url` (else $H3OPS_SERVING_URL) that production is now version V with digest D,
    and wait for its switch. No endpoint configured: nothing to notify (the embedded default)."""
    from serving.handoff import reload

    url = url or os.environ.get(SERVING_URL_ENV)
    if not url:
        return {"notified": False, "reason": f"no serving endpoint (connection h3ops_serving or ${SERVING_URL_ENV})"}
    ref = registry(cfg).production(cfg.project)
    if ref is None:
        raise LookupError(f"{cfg.project}: no production version to hand to serving")
    digest = ref.tags.get("h3ops.content_digest")
    if not digest:
        raise LookupError(f"{ref.uri} has no h3ops.content_digest tag: serving cannot verify it")
    result = reload(url, version=ref.version, digest=digest, token=token or os.environ.get(SERVING_TOKEN_ENV),
                    timeout_s=timeout_s)
    return {"notified": True, "url": url, **result}
