"""Request and response shapes of the WebRTC routes (no aiortc here: the router imports them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from runtime.control.schemas import Input, check_e164
from runtime.telephony.webrtc.sdp import MAX_SDP_BYTES

SESSION_PATH = "/api/v1/webrtc/sessions"


class _Target(Input):
    agent_id: str | None = Field(None, min_length=1, max_length=100, description="the agent to call")
    number: str | None = Field(None, description="a number of the tenant whose agent answers (E.164)")

    _e164 = field_validator("number")(check_e164)


class BrowserTokenRequest(_Target):
    ttl_s: int = Field(300, ge=30, le=86400, description="lifetime in seconds (at most telephony.webrtc.token_max_ttl_s)")

    @model_validator(mode="after")
    def _one_target(self) -> BrowserTokenRequest:
        if (self.agent_id is None) == (self.number is None):
            raise ValueError("name exactly one of agent_id or number")
        return self


class SessionRequest(_Target):
    type: Literal["offer"] = Field(description="always offer: the runtime answers")
    sdp: str = Field(min_length=1, max_length=MAX_SDP_BYTES, description="the RTCPeerConnection's offer SDP")


@dataclass(frozen=True)
class BrowserToken:
    token: str
    expires_at: int  # unix seconds
    agent_id: str | None
    number: str | None
    session_url: str
    ice_servers: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionAnswer:
    call_id: str
    type: str  # "answer"
    sdp: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class IceServers:
    ice_servers: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
