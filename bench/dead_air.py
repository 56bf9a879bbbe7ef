"""Dead air over the caller set: does every caller turn get a reply before the re-prompt?

Each utterance of the caller set (bench/caller_set.py: espeak-ng voices, the telephone line,
noise at the given SNRs) is one call to ``voicectl serve`` with the offline stack and the demo's
booking agent, over the Twilio protocol in real time: the caller's line carries its noise the
whole call (before, between and after the words, as a noisy line does), waits for the greeting,
says the utterance, and listens. A turn is **dead air** when no agent audio comes back before the
re-prompt would (``turn.silence_reprompt_s``, 8 s, less half a second): the caller was met with
silence. Otherwise the first reply's delay is timed from the end of the caller's words, and the
runtime's own transcript says whether the reply was the "didn't catch that" line (speech whose
text the recogniser or its filter did not accept) or an answer.

    .venv/bin/python bench/dead_air.py                           # test half, clean/20/10 dB, default model
    .venv/bin/python bench/dead_air.py --stt-model base --snrs 10 --limit 8
    .venv/bin/python bench/dead_air.py --quick                   # a smoke run (tests/bench/test_bench_dead_air_smoke.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import pct, runtime  # noqa: E402
from twilio_common import ACCOUNT_SID, AUTH_TOKEN, NUMBER, _log  # noqa: E402

from bench import caller_set  # noqa: E402
from runtime.audio import ULAW_FRAME_BYTES  # noqa: E402
from runtime.control.schemas import NOT_UNDERSTOOD_REPLY, SILENCE_REPROMPT_S  # noqa: E402

DEAD_AIR_S = SILENCE_REPROMPT_S - 0.5  # no reply by then: only the re-prompt would break the silence
IDLE_S = 2.0  # of line noise looped between the caller's words


@dataclass(frozen=True)
class CallerTurn:
    text: str
    voice: str
    snr_db: float | None
    frames: list[bytes]  # the words, as the phone sends them
    idle: list[bytes]  # the line's noise with no one speaking


@dataclass
class Outcome:
    turn: CallerTurn
    call_sid: str = ""
    reply_s: float | None = None  # first agent audio after the caller's words; None: dead air
    rejected: bool = False
    heard: str = ""  # what the runtime took the caller to say
    reply: str = ""  # the agent's first line after it
    events: tuple[str, ...] = ()  # the call's event topics, in order (--verbose prints a dead-air call's)


def turns(half: str, snrs: list[float | None], limit: int | None) -> list[CallerTurn]:
    """The half's utterances at each line condition (at most ``limit`` of each), same seeds as the WER set."""
    out = []
    for snr in snrs:
        mine = []
        for index, line in enumerate(caller_set.LINES):
            if half != "all" and caller_set.half_of(index) != half:
                continue
            for voice in caller_set.voices_of(index):
                seed = zlib.crc32(f"{index}/{voice.name}/{snr}".encode())
                words, idle = caller_set.on_the_line(caller_set.speak(line.text, voice), snr, seed, IDLE_S)
                mine.append(CallerTurn(line.text, voice.name, snr, _frames(words), _frames(idle)))
        out += mine[:limit]
    return out


def _frames(ulaw: bytes) -> list[bytes]:
    return [ulaw[i:i + ULAW_FRAME_BYTES] for i in range(0, len(ulaw) - ULAW_FRAME_BYTES + 1, ULAW_FRAME_BYTES)]


async def _first_audio_after(leg: Any, since: float, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not leg.closed.is_set():
        arrivals = leg.result.arrivals
        if arrivals and arrivals[-1] > since:
            return next(t for t in arrivals if t > since) - since
        await asyncio.sleep(0.01)
    return None


async def one_call(url: str, turn: CallerTurn) -> Outcome:
    from runtime.telephony.scripted_caller import OpenLine, agent_quiet, hang_up, release
    from runtime.telephony.twilio.caller import TwilioCaller

    out = Outcome(turn)
    async with TwilioCaller(url, ACCOUNT_SID, AUTH_TOKEN) as caller:
        out.call_sid, answer = await caller.dial(NUMBER)
        if answer.rejected:
            out.rejected = True
            return out
        leg = await caller.open_stream(out.call_sid, answer)
        line = OpenLine(leg, idle=turn.idle)
        try:
            await agent_quiet(leg, 0.9, 0.0, 20)  # the greeting
            line.say(turn.frames)
            await line.speaking_done.wait()
            out.reply_s = await _first_audio_after(leg, time.monotonic(), DEAD_AIR_S)
            if out.reply_s is not None:
                await agent_quiet(leg, 0.9, time.monotonic() - 0.1, 15)  # let the reply finish
            await hang_up(caller, out.call_sid, leg)
        finally:
            await release(leg, line)
    return out


async def run_calls(url: str, todo: list[CallerTurn], concurrency: int) -> list[Outcome]:
    gate = asyncio.Semaphore(concurrency)

    async def guarded(turn: CallerTurn) -> Outcome:
        async with gate:
            return await one_call(url, turn)

    return list(await asyncio.gather(*(guarded(t) for t in todo)))


def read_transcripts(db: Path, outcomes: list[Outcome]) -> None:
    """The caller's first line as heard and the agent's first line after it, per call."""
    with sqlite3.connect(db) as conn:
        for out in outcomes:
            rows = conn.execute(
                "SELECT t.role, t.text FROM transcripts t JOIN voice_calls c ON c.id = t.call_id "
                "WHERE c.provider_call_id = ? ORDER BY t.seq", (out.call_sid,)).fetchall()
            out.events = tuple(topic for (topic,) in conn.execute(
                "SELECT e.topic FROM call_events e JOIN voice_calls c ON c.id = e.call_id "
                "WHERE c.provider_call_id = ? ORDER BY e.seq", (out.call_sid,)))
            caller_at = next((i for i, (role, _) in enumerate(rows) if role == "caller"), None)
            if caller_at is None:
                continue
            out.heard = rows[caller_at][1]
            out.reply = next((text for role, text in rows[caller_at + 1:] if role == "agent"), "")


def report(outcomes: list[Outcome], snrs: list[float | None]) -> list[dict[str, Any]]:
    rows = []
    print(f"{'line':>6} {'turns':>5} {'dead air':>8} {'not understood':>14} {'answered':>8} "
          f"{'reply p50 s':>11} {'reply p95 s':>11} {'refused':>7}")
    for snr in snrs:
        mine = [o for o in outcomes if o.turn.snr_db == snr]
        placed = [o for o in mine if not o.rejected]
        dead = [o for o in placed if o.reply_s is None]
        missed = [o for o in placed if o.reply_s is not None and o.reply.startswith(NOT_UNDERSTOOD_REPLY)]
        delays = [o.reply_s for o in placed if o.reply_s is not None]
        row = {"snr_db": snr, "turns": len(placed), "dead_air": len(dead), "not_understood": len(missed),
               "answered": len(placed) - len(dead) - len(missed), "reply_p50_s": pct(delays, 0.5),
               "reply_p95_s": pct(delays, 0.95), "refused": len(mine) - len(placed)}
        rows.append(row)
        label = "clean" if snr is None else f"{snr:g} dB"
        p50 = f"{row['reply_p50_s']:.2f}" if delays else "-"
        p95 = f"{row['reply_p95_s']:.2f}" if delays else "-"
        print(f"{label:>6} {row['turns']:>5} {row['dead_air']:>8} {row['not_understood']:>14} {row['answered']:>8} "
              f"{p50:>11} {p95:>11} {row['refused']:>7}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half", choices=("tune", "test", "all"), default="test", help="of the caller set")
    parser.add_argument("--snrs", default="clean,20,10", help="line conditions: clean and/or SNRs in dB")
    parser.add_argument("--stt-model", choices=("base", "tiny.en"), help="providers.local.stt_model (default: the box's)")
    parser.add_argument("--concurrency", type=int, default=2, help="calls at once")
    parser.add_argument("--limit", type=int, help="at most this many utterances per line condition")
    parser.add_argument("--verbose", action="store_true", help="print every turn: heard, reply, delay")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 utterances at 10 dB")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.snrs, args.limit = "10", 2
    snrs = [None if s == "clean" else float(s) for s in args.snrs.split(",") if s]
    todo = turns(args.half, snrs, args.limit)
    with runtime(False, False, args.stt_model) as rt:
        _log(f"dead air: {len(todo)} calls, {args.concurrency} at once ...")
        outcomes = asyncio.run(run_calls(rt.url, todo, args.concurrency))
        read_transcripts(rt.state / "voicectl.db", outcomes)
    if args.verbose:
        for o in outcomes:
            delay = "DEAD AIR" if o.reply_s is None else f"{o.reply_s:5.2f} s"
            print(f"  {o.turn.voice:>18} {str(o.turn.snr_db):>5} {delay:>8}  {o.heard!r} -> {o.reply[:60]!r}")
            if o.reply_s is None:
                print(f"      said {o.turn.text!r}; events: {', '.join(o.events)}")
    print(f"\ndead air over the caller set ({args.half} half; no reply within {DEAD_AIR_S:g} s of the caller's "
          f"words; model {args.stt_model or 'default'})")
    rows = report(outcomes, snrs)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
