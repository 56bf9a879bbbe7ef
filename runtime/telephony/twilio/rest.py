"""Twilio's REST calls: create (outbound), and update: transfer (new <Dial> TwiML), hang-up
(Status=completed) and cancel (Status=canceled, for a call not answered yet)."""

from __future__ import annotations

import base64

import aiohttp

from runtime.telephony.twilio import twiml

TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
# The account SID of the demo and of local calls (`voicectl demo`, `voicectl call`): the shape of one,
# with no Twilio account behind it. Calls of a tenant with it are controlled on the media side only.
PLACEHOLDER_ACCOUNT_SID = "AC" + "0" * 32


class TwilioApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"Twilio API answered {status}: {body[:300]}")
        self.status = status
        self.body = body


class TwilioRest:
    def __init__(self, api_base_url: str, account_sid: str, auth_token: str,
                 http: aiohttp.ClientSession | None = None) -> None:
        self.base = api_base_url.rstrip("/")
        self.account_sid = account_sid
        basic = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {basic}"}
        self._http = http

    async def create_call(self, form: list[tuple[str, str]]) -> dict:
        """Calls.create (POST .../Calls.json): the call resource Twilio answers (``sid``, ``status``).
        A list of pairs: StatusCallbackEvent repeats, one value each."""
        return await self._send(f"{self.base}/2010-04-01/Accounts/{self.account_sid}/Calls.json", form)

    async def update_call(self, call_sid: str, form: dict[str, str]) -> dict:
        return await self._send(f"{self.base}/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json", form)

    async def _send(self, url: str, form: dict[str, str] | list[tuple[str, str]]) -> dict:
        if self._http is not None:
            return await self._post(self._http, url, form)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            return await self._post(http, url, form)

    async def _post(self, http: aiohttp.ClientSession, url: str, form: dict[str, str] | list[tuple[str, str]]) -> dict:
        async with http.post(url, data=form, headers=self._headers, timeout=TIMEOUT) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise TwilioApiError(resp.status, text)
            try:
                return await resp.json(content_type=None)
            except ValueError:
                return {}

    async def transfer(self, call_sid: str, target: str) -> dict:
        return await self.update_call(call_sid, {"Twiml": twiml.document(twiml.dial(target))})

    async def hangup(self, call_sid: str) -> dict:
        return await self.update_call(call_sid, {"Status": "completed"})

    async def cancel(self, call_sid: str) -> dict:
        """Only a call still queued or ringing can be canceled (Twilio answers an error otherwise)."""
        return await self.update_call(call_sid, {"Status": "canceled"})
