"""A real browser calls an agent: headless Chromium (Debian's ``chromium``) opens the runtime's
/call page with a fake microphone playing caller speech made at test time, places the call
through the page's own UI (runtime key in the URL fragment -> agent list -> browser token ->
offer), and the test checks the stored transcript and that the agent's greeting reached the
browser (``totalAudioEnergy`` of the inbound audio rises). A screenshot of the page during the
call is saved under artifacts/webrtc/ (git-ignored)."""

from __future__ import annotations

from runtime.audio import write_wav
from runtime.config import build_settings
from runtime.secrets import write_master_key
from tests.api.support import high_limits, start_live_api, stop_live_api, with_overrides
from tests.webrtc.support import ARTIFACTS, Chromium, piper_speech, require_chromium, wait_for, with_silence
from voicectl.demo import provision

RATE = 48000


async def test_a_browser_calls_the_agent_from_the_call_page(tmp_path) -> None:
    binary = require_chromium()
    base = build_settings({"database": {"url": f"sqlite:///{tmp_path}/voicectl.db"},
                           "secrets": {"backend": "cryptfile"}}, tmp_path)
    write_master_key(base.master_key_path)
    api, runner = await start_live_api(with_overrides(base, limits=high_limits(), server={"shutdown_grace_s": 0.2},
                                                      telephony={"webrtc": {"host_candidates": ["127.0.0.1"]}}))
    browser: Chromium | None = None
    try:
        made = await provision(api.control)
        status, key, _ = await api.call("POST", "/api/v1/auth/api-keys", api.admin_key,
                                        json={"tenant_id": made["tenant_id"], "scope": "runtime"})
        assert status == 201, key
        # The caller lets the greeting play (~4 s), then asks for a table; silence after (noloop).
        speech = await piper_speech("I'd like to book a table for two at seven.")
        capture = tmp_path / "caller.wav"
        write_wav(capture, with_silence(speech, RATE, lead_s=6.0, tail_s=2.0), RATE)

        browser = Chromium(binary, tmp_path / "chromium", capture)
        await browser.start()
        await browser.goto(f"{api.base_url}/call#key={key['key']}&agent={made['agent_id']}")
        assert await browser.evaluate("location.hash") == "", "the key is taken out of the address"
        await browser.until(f"document.getElementById('agent').value === '{made['agent_id']}'", 10)
        assert await browser.evaluate("window.voicectlStats()") is None  # no call yet
        await browser.evaluate("document.getElementById('call').click()")
        await browser.until("window.voicectlState().status === 'connected'", 15)
        call_id = await browser.evaluate("window.voicectlState().callId")
        assert call_id

        # The greeting reaches the browser: inbound audio energy rises while it plays.
        first = await browser.until("window.voicectlStats().then(s => s && s.packetsReceived > 0 && s)", 10)
        loud = await browser.until(
            f"window.voicectlStats().then(s => s && s.totalAudioEnergy > {first['totalAudioEnergy']} + 0.01 && s)", 10)
        assert loud["totalAudioEnergy"] > first["totalAudioEnergy"]
        shot = await browser.screenshot(ARTIFACTS / "call-page-greeting.png")
        print(f"\nscreenshot during the greeting: {shot}")

        async def caller_heard():
            rows, _ = await api.control.store.transcripts.list(tenant_id=made["tenant_id"],
                                                              equals={"call_id": call_id}, limit=50)
            said = [(r["role"], r["text"]) for r in rows]
            return said if any(role == "caller" for role, _ in said) and said[-1][0] == "agent" and len(said) >= 3 \
                else None

        said = await wait_for(caller_heard, 40, "the caller's words in the transcript and the agent's answer")
        assert said[0] == ("agent", "Hello, thanks for calling Trattoria Demo! How can I help you?")
        caller = next(text for role, text in said if role == "caller").lower()
        assert "table" in caller, said
        # The page showed the same transcript and a latency row, live over its data channel.
        page = await browser.until("(s => s.transcript.length >= 3 && s.latencies.length >= 1 && s)"
                                   "(window.voicectlState())", 10)
        assert [t["text"] for t in page["transcript"][:3]] == [text for _, text in said[:3]]
        assert page["latencies"][0]["v2v_ms"] > 0
        shot = await browser.screenshot(ARTIFACTS / "call-page-answered.png")
        print(f"screenshot after the answer: {shot}")

        await browser.evaluate("document.getElementById('hangup').click()")

        async def ended():
            row = await api.control.store.voice_calls.get(call_id, tenant_id=made["tenant_id"])
            return row if row["status"] in ("ended", "failed") else None

        row = await wait_for(ended, 10, "the call to end")
        assert (row["status"], row["end_reason"], row["hangup_by"]) == ("ended", "caller_hangup", "caller")
        assert row["provider"] == "webrtc" and row["summary"]["media"]["codec"] == "opus"
        assert row["summary"]["media"]["inbound_frames"] > 300 and row["summary"]["media"]["outbound_frames"] > 100
        await browser.until("window.voicectlState().status.startsWith('ended')", 5)
    except BaseException:
        if browser is not None and browser.ws is not None and not browser.ws.closed:
            await browser.screenshot(ARTIFACTS / "call-page-failure.png")
        raise
    finally:
        if browser is not None:
            await browser.close()
        await stop_live_api(api, runner)
