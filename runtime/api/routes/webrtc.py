"""WebRTC: browser tokens, SDP offers answered by the aiortc bridge, and the /call page."""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from runtime.api.endpoint import Ctx, Route
from runtime.telephony.webrtc.models import (
    BrowserToken,
    BrowserTokenRequest,
    IceServers,
    SessionAnswer,
    SessionRequest,
)

# The page may only load its own script and talk to this origin (its API and media need nothing else).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
PAGE_FILES = {"call.html": "text/html", "call.js": "text/javascript", "call.css": "text/css"}


@cache
def _page_file(name: str) -> bytes:
    return resources.files("runtime.api").joinpath("static", name).read_bytes()


def _static(name: str) -> web.Response:
    return web.Response(body=_page_file(name), content_type=PAGE_FILES[name], charset="utf-8",
                        headers=PAGE_HEADERS)


async def create_token(ctx: Ctx) -> BrowserToken:
    from runtime.api.webrtc_sessions import mint_token

    principal = ctx.principal
    assert principal is not None  # an authenticated route
    return await mint_token(ctx.request, ctx.tenant, principal.key_id, ctx.body)


async def create_session(ctx: Ctx) -> web.Response:
    from runtime.api.webrtc_sessions import create_session as create

    return await create(ctx.request, ctx.read_body)


async def ice_servers(ctx: Ctx) -> IceServers:
    from runtime.api.webrtc_sessions import ice_servers as listed

    return await listed(ctx.request)


async def call_page(ctx: Ctx) -> web.Response:
    return _static("call.html")


async def call_script(ctx: Ctx) -> web.Response:
    return _static("call.js")


async def call_style(ctx: Ctx) -> web.Response:
    return _static("call.css")


KEY_OR_TOKEN = "runtime key, admin key + X-Tenant-ID, or browser token"

ROUTES = [
    Route("POST", "/api/v1/webrtc/tokens", create_token,
          "Mint a short-lived browser token to call one agent or number over WebRTC", body=BrowserTokenRequest,
          status=201, response=BrowserToken, tag="webrtc", rate_class="realtime", errors=(404, 422)),
    Route("POST", "/api/v1/webrtc/sessions", create_session,
          f"Place a WebRTC call: SDP offer in, answer out ({KEY_OR_TOKEN})", auth="public", body=SessionRequest,
          defer_body=True, status=201, response=SessionAnswer, tag="webrtc",
          errors=(400, 401, 403, 404, 409, 422, 429, 503)),
    Route("GET", "/api/v1/webrtc/ice-servers", ice_servers,
          f"The STUN/TURN servers a browser should use ({KEY_OR_TOKEN})", auth="public", response=IceServers,
          tag="webrtc", errors=(400, 401, 403, 404)),
    Route("GET", "/call", call_page, "The browser call page (HTML; a key or token goes in the URL fragment)",
          auth="public", tag="webrtc", media_type="text/html"),
    Route("GET", "/call/call.js", call_script, "The call page's script", auth="public", tag="webrtc",
          media_type="text/javascript"),
    Route("GET", "/call/call.css", call_style, "The call page's style sheet", auth="public", tag="webrtc",
          media_type="text/css"),
]
