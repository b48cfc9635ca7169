"""Drives voxgate with the official openai-python SDK, for the end-to-end tests.

Usage: python_client.py SCENARIO

Env: OPENAI_BASE_URL, OPENAI_API_KEY (read by the SDK), VOXGATE_AUDIO_FILE,
VOXGATE_MAX_RETRIES (default 0), VOXGATE_MODEL and VOXGATE_VOICE (optional).

The last line of stdout is one JSON object: the scenario's result, or
{"error": {"class", "status", "message"}} with exit code 3 for an
openai.APIStatusError and 1 for any other exception.
"""

import hashlib
import json
import os
import sys
import time
import traceback

import openai

MODEL = os.environ.get("VOXGATE_MODEL")
VOICE = os.environ.get("VOXGATE_VOICE", "alloy")
INPUT = "Hello from voxgate"

client = openai.OpenAI(max_retries=int(os.environ.get("VOXGATE_MAX_RETRIES", "0")))


def audio_file():
    return open(os.environ["VOXGATE_AUDIO_FILE"], "rb")


def speech_args():
    return dict(model=MODEL or "tts-1", voice=VOICE, input=INPUT, response_format="pcm")


def speech():
    data = client.audio.speech.create(**speech_args()).content
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def speech_stream():
    digest, size, chunks, first_chunk_ms = hashlib.sha256(), 0, 0, None
    start = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(**speech_args()) as response:
        for chunk in response.iter_bytes():
            if first_chunk_ms is None:
                first_chunk_ms = (time.perf_counter() - start) * 1000
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
        headers = response.headers
    return {
        "bytes": size,
        "sha256": digest.hexdigest(),
        "chunks": chunks,
        "first_chunk_ms": first_chunk_ms,
        "total_ms": (time.perf_counter() - start) * 1000,
        "request_id": headers.get("x-request-id"),
        "upstream": headers.get("x-voxgate-upstream"),
    }


def transcribe():
    with audio_file() as f:
        result = client.audio.transcriptions.create(model=MODEL or "whisper-1", file=f, response_format="json")
    return {"text": result.text}


def transcribe_text():
    with audio_file() as f:
        text = client.audio.transcriptions.create(model=MODEL or "whisper-1", file=f, response_format="text")
    return {"text": text}


def translate():
    with audio_file() as f:
        result = client.audio.translations.create(model=MODEL or "whisper-1", file=f)
    return {"text": result.text}


def transcribe_stream():
    events, text = [], None
    with audio_file() as f:
        stream = client.audio.transcriptions.create(model=MODEL or "gpt-4o-mini-transcribe", file=f, stream=True)
        for event in stream:
            events.append(event.type)
            if event.type == "transcript.text.done":
                text = event.text
    return {"events": events, "text": text}


SCENARIOS = {f.__name__: f for f in (speech, speech_stream, transcribe, transcribe_text, translate, transcribe_stream)}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit(f"usage: python_client.py {{{','.join(SCENARIOS)}}}")
    try:
        result = SCENARIOS[sys.argv[1]]()
    except openai.APIStatusError as e:
        print(f"{type(e).__name__}: status {e.status_code}: {e.message}", file=sys.stderr)
        print(json.dumps({"error": {"class": type(e).__name__, "status": e.status_code, "message": e.message}}))
        sys.exit(3)
    except Exception as e:
        traceback.print_exc()
        print(json.dumps({"error": {"class": type(e).__name__, "status": None, "message": str(e)}}))
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
