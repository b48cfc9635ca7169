#!/usr/bin/env python3
"""Drives voice-mode's headless calls against the base URL in VOXGATE_BASE_URL.

Runs voice_mode.simple_failover.simple_tts_synthesize and simple_stt_failover, the
paths voice-mode uses to speak and to listen, without an audio device. voice-mode reads
its configuration when it is imported, so the environment is set first and the import
comes after. The last stdout line is one JSON object with both results.
"""

import asyncio
import io
import json
import math
import os
import struct
import sys
import tempfile
import wave


def wav_bytes(seconds=0.5, rate=16000):
    """A 16 kHz mono 16-bit tone, as voice-mode records speech."""
    frames = b"".join(
        struct.pack("<h", int(5000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def configure():
    base = os.environ["VOXGATE_BASE_URL"]
    home = tempfile.mkdtemp(prefix="voxgate-voicemode-")
    # voice-mode writes ~/.voicemode and looks for .voicemode.env upwards from the cwd.
    os.environ["HOME"] = home
    os.chdir(home)
    os.environ["VOICEMODE_TTS_BASE_URLS"] = base
    os.environ["VOICEMODE_STT_BASE_URLS"] = base
    # One request per call: the proxy does the failing over.
    os.environ["VOICEMODE_STT_RETRY_ATTEMPTS"] = "0"
    os.environ["VOICEMODE_EVENT_LOG_ENABLED"] = "false"
    os.environ.pop("OPENAI_API_KEY", None)


async def run(voice):
    from voice_mode.simple_failover import simple_stt_failover, simple_tts_synthesize

    ok, samples, rate, _metrics, config = await simple_tts_synthesize("Hello from voice-mode.", voice)
    upload = io.BytesIO(wav_bytes())
    upload.name = "recording.wav"
    stt = await simple_stt_failover(upload)
    return {
        "tts": {
            "ok": bool(ok),
            "samples": None if samples is None else int(len(samples)),
            "rate": rate,
            "config": config,
        },
        "stt": stt,
    }


def main():
    configure()
    voice = sys.argv[1] if len(sys.argv) > 1 else "af_sky"
    result = asyncio.run(run(voice))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
