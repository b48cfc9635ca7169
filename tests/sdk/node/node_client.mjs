// Drives voxgate with the official openai-node SDK, for the end-to-end tests.
//
// Usage: node node_client.mjs SCENARIO
//
// Env: OPENAI_BASE_URL, OPENAI_API_KEY (read by the SDK), VOXGATE_AUDIO_FILE,
// VOXGATE_MAX_RETRIES (default 0), VOXGATE_MODEL and VOXGATE_VOICE (optional).
//
// The last line of stdout is one JSON object: the scenario's result, or
// {"error": {"class", "status", "message"}} with exit code 3 for an
// OpenAI.APIError that carries a status and 1 for any other exception.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import OpenAI from 'openai';

const env = process.env;
const client = new OpenAI({ maxRetries: Number(env.VOXGATE_MAX_RETRIES ?? 0) });

const scenarios = {
  // fs.createReadStream uploads go out chunked, without Content-Length, file part first.
  async transcribe_stream_file() {
    const result = await client.audio.transcriptions.create({
      file: fs.createReadStream(env.VOXGATE_AUDIO_FILE),
      model: env.VOXGATE_MODEL || 'whisper-1',
      response_format: 'json',
    });
    return { text: result.text };
  },

  async translate_stream_file() {
    const result = await client.audio.translations.create({
      file: fs.createReadStream(env.VOXGATE_AUDIO_FILE),
      model: env.VOXGATE_MODEL || 'whisper-1',
      response_format: 'json',
    });
    return { text: result.text };
  },

  async speech() {
    const response = await client.audio.speech.create({
      model: env.VOXGATE_MODEL || 'tts-1',
      voice: env.VOXGATE_VOICE || 'alloy',
      input: 'Hello from voxgate',
      response_format: 'pcm',
    });
    const data = Buffer.from(await response.arrayBuffer());
    return { bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') };
  },
};

const name = process.argv[2];
if (!Object.hasOwn(scenarios, name)) {
  console.error(`usage: node node_client.mjs {${Object.keys(scenarios).join(',')}}`);
  process.exit(1);
}
try {
  console.log(JSON.stringify(await scenarios[name]()));
} catch (e) {
  const status = e instanceof OpenAI.APIError ? (e.status ?? null) : null;
  console.error(status === null ? e : `${e.constructor.name}: status ${status}: ${e.message}`);
  console.log(JSON.stringify({ error: { class: e.constructor.name, status, message: e.message } }));
  process.exit(status === null ? 1 : 3);
}
