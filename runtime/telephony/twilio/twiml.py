"""TwiML as Twilio's own helper library renders it (tests compare with ``twilio.twiml``).

Sources: twilio.com/docs/voice/twiml/dial (a SIP target is a ``<Sip>`` noun inside ``<Dial>``;
a bare ``sip:`` URI as ``<Dial>`` text is not dialled), twilio.com/docs/voice/twiml/stream
(``<Connect><Stream url statusCallback statusCallbackMethod>`` with ``<Parameter>`` children),
twilio.com/docs/voice/twiml/reject, twilio.com/docs/voice/twiml/hangup.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr


def document(body: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>'


def dial(target: str) -> str:
    """``<Dial>`` for a transfer target: E.164 as the number, a ``sip:``/``sips:`` URI as ``<Sip>``."""
    if target.lower().startswith(("sip:", "sips:")):
        return f"<Dial><Sip>{escape(target)}</Sip></Dial>"
    return f"<Dial>{escape(target)}</Dial>"


def stream(url: str, token: str, status_callback: str | None = None) -> str:
    """``<Connect><Stream>`` (bidirectional) carrying the stream token as a custom parameter; with
    ``status_callback``, Twilio posts stream-started, stream-stopped and stream-error there."""
    # The library writes attributes in name order.
    callback = (f'statusCallback={quoteattr(status_callback)} statusCallbackMethod="POST" '
                if status_callback else "")
    return (f"<Connect><Stream {callback}url={quoteattr(url)}>"
            f'<Parameter name="token" value={quoteattr(token)} /></Stream></Connect>')


REJECT = "<Reject />"
HANGUP = "<Hangup />"
REJECT_BUSY = '<Reject reason="busy" />'
