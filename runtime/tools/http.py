"""Tenant HTTP tools: a tool call becomes a signed JSON POST to the tenant's endpoint.

The request body is ``{"tool", "arguments", "call_id", "tenant_id"}``; the response's JSON body
is the tool result (an object as is; any other JSON value arrives as ``{"result": value}``).

Signing: when the tenant has a credential named ``tools``, its secret signs every request exactly
like our outbound webhooks (``X-Voicectl-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``,
see runtime.events.delivery); the endpoint checks it with the same code as for webhooks. Without
that credential requests go unsigned, so an endpoint that acts on them must not be public. If
the secret cannot be read, the call fails rather than going out unsigned.

Failures never raise: a non-2xx answer, a timeout, an unreachable endpoint, a body that is not
JSON or is too large become error results worded for the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from runtime.control.schemas import HttpTool as HttpToolConfig
from runtime.egress.aiohttp_client import guarded_session
from runtime.egress.policy import REFUSED, EgressPolicy, refused
from runtime.events.delivery import SIGNATURE_HEADER, sign
from runtime.providers.base import ToolSpec
from runtime.tools.base import ToolContext, ToolResult
from runtime.tools.builtin import error_result

log = logging.getLogger("voicectl.tools")

USER_AGENT = "voicectl-tools/1"
TOOL_HEADER = "X-Voicectl-Tool"
CALL_HEADER = "X-Voicectl-Call-Id"
MAX_RESPONSE_BYTES = 64 * 1024  # the result goes into the model's context
SIGNING_CREDENTIAL = "tools"
# The toolbox's own limit sits this much above the request's, so the request's clearer error wins.
GRACE_S = 1.0

SecretLookup = Callable[[str], Awaitable[str | None]]


@dataclass(slots=True)
class HttpTool:
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    request_timeout_s: float = 5.0
    http: aiohttp.ClientSession | None = None  # shared by the app (egress-guarded); None: one session per request
    signing_secret: SecretLookup | None = None  # tenant_id -> secret of its `tools` credential
    egress: EgressPolicy = field(default_factory=EgressPolicy)  # guards the session made per request

    @classmethod
    def from_config(cls, config: HttpToolConfig, *, http: aiohttp.ClientSession | None = None,
                    signing_secret: SecretLookup | None = None, egress: EgressPolicy | None = None) -> HttpTool:
        """From one entry of AgentConfig.http_tools."""
        return cls(config.name, config.description, dict(config.parameters), config.url, config.timeout_s,
                   http, signing_secret, egress or EgressPolicy())

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    @property
    def timeout_s(self) -> float:
        return self.request_timeout_s + GRACE_S

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        body = orjson.dumps({"tool": self.name, "arguments": arguments, "call_id": ctx.call_id,
                             "tenant_id": ctx.tenant_id})
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, TOOL_HEADER: self.name,
                   CALL_HEADER: ctx.call_id}
        if self.signing_secret is not None:
            try:
                secret = await self.signing_secret(ctx.tenant_id)
            except Exception:
                log.exception("could not read the tools signing secret", extra={"tool": self.name})
                return error_result("the tool is unavailable (its signing secret could not be read)")
            if secret:
                headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
        owned = self.http is None
        http = guarded_session(self.egress) if owned else self.http
        try:
            return await self._post(http, body, headers)
        finally:
            if owned:
                await http.close()

    async def _post(self, http: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> ToolResult:
        limit = self.request_timeout_s
        try:
            async with asyncio.timeout(limit):
                async with http.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                    status = resp.status
                    raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            return error_result(f"the {self.name} service did not answer within {limit:g} s", "timeout")
        except aiohttp.ClientError as exc:
            log.warning("tool endpoint unreachable",
                        extra={"tool": self.name, "error": REFUSED if refused(exc) else type(exc).__name__})
            return error_result(f"the {self.name} service could not be reached")
        if len(raw) > MAX_RESPONSE_BYTES:
            return error_result(f"the {self.name} service answered more than {MAX_RESPONSE_BYTES} bytes")
        if not 200 <= status < 300:
            detail = raw[:300].decode("utf-8", "replace")
            return error_result(f"the {self.name} service failed (HTTP {status})", http_status=status,
                                detail=detail)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error_result(f"the {self.name} service answered something that is not JSON")
        return ToolResult(value if isinstance(value, dict) else {"result": value})
