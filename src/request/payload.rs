//! A request body after intake: what the rules read from it and how it is re-sent.
//!
//! Speech requests are JSON objects held in memory; transcriptions and translations are
//! multipart forms whose text parts are held in memory and whose file parts live in the
//! request's [`Replay`]; anything else is a raw replay. [`Payload::render`] produces the body
//! for one upstream with that upstream's rewrites applied: JSON is re-serialised only when a
//! value actually changes (unknown keys survive), forms are re-framed with the client's own
//! boundary and only text parts are replaced.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use crate::engine::dialect::{Convert, Dialect};
use crate::request::outgoing::Segment;
use crate::request::replay::Replay;
use crate::route::FieldValue;

/// The rewrites for one attempt: the route's `set`, then the upstream's maps, then what
/// its dialect needs (fields it refuses left out, voices it cannot take replaced, a stream
/// it cannot produce asked for as a plain answer).
#[derive(Debug, Clone, Copy)]
pub struct Edits<'a> {
    pub set: &'a [(String, FieldValue)],
    pub model_map: &'a HashMap<String, String>,
    pub voice_map: &'a HashMap<String, String>,
    pub dialect: &'a Dialect,
    /// Fields this upstream refuses for this endpoint.
    pub drop_fields: &'a [String],
    pub convert: Convert,
    /// A translation sent to a transcription path with `translate=true` (whisper.cpp).
    pub translate: bool,
}

/// The `generic` dialect: no adaptation.
static GENERIC: LazyLock<Dialect> = LazyLock::new(Dialect::default);

impl<'a> Edits<'a> {
    /// `set` and the maps only, as for a `generic` upstream.
    pub fn plain(
        set: &'a [(String, FieldValue)],
        model_map: &'a HashMap<String, String>,
        voice_map: &'a HashMap<String, String>,
    ) -> Edits<'a> {
        Edits {
            set,
            model_map,
            voice_map,
            dialect: &GENERIC,
            drop_fields: &[],
            convert: Convert::None,
            translate: false,
        }
    }

    fn sets(&self, key: &str) -> bool {
        self.set.iter().any(|(k, _)| k == key)
    }

    /// Whether a client field is left out for this upstream (a route's `set` always wins).
    fn drops(&self, key: &str, value: Option<&str>) -> bool {
        if self.sets(key) {
            return false;
        }
        let refused = self.drop_fields.iter().any(|f| f == key);
        let language = key == "language"
            && value.is_some_and(|v| self.dialect.drop_language.iter().any(|l| l == v.trim()));
        let streaming = match self.convert {
            Convert::SpeechSse => key == "stream_format",
            Convert::TranscriptSse => key == "stream",
            Convert::None => false,
        };
        refused || language || streaming
    }
}

/// A speech request: `raw` is sent as it came unless a rewrite changes a value.
#[derive(Debug)]
pub struct JsonBody {
    pub raw: Bytes,
    pub object: JsonObject,
}

/// A JSON object's members in their order, each key once: a repeated key keeps its first
/// place and its last value, as serde_json's `preserve_order` map keeps it.
///
/// Not that map because of its cost: a speech body has a handful of members, read a dozen
/// times per request (routing, each upstream's edits, rendering), and the map hashes every
/// key with SipHash on every insert and look-up; a linear search over a few short keys is
/// several times cheaper, and there is no hash table to allocate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonObject(Vec<(String, Value)>);

impl JsonObject {
    /// Parses a JSON text: `Ok(None)` when it is valid JSON but not an object.
    pub fn parse(raw: &[u8]) -> Result<Option<JsonObject>, serde_json::Error> {
        // One UTF-8 check of the whole text (JSON is UTF-8, RFC 8259 §8.1): parsing from
        // bytes, serde_json checks each string on its own, which cost more than the
        // whole check on a speech body; from a `str` it need not.
        let text = std::str::from_utf8(raw).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "the text is not UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        serde_json::from_str::<MaybeObject>(text).map(|m| m.0)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Replaces the value in place when the key is there, else appends the member.
    pub fn insert(&mut self, key: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes a member, keeping the others in their order.
    pub fn shift_remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// A JSON text read as an object, or as `None` when it is any other value.
struct MaybeObject(Option<JsonObject>);

impl<'de> Deserialize<'de> for MaybeObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = MaybeObject;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeObject, A::Error> {
                let mut object = JsonObject(Vec::with_capacity(map.size_hint().unwrap_or(8)));
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    object.insert(key, value);
                }
                Ok(MaybeObject(Some(object)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeObject, A::Error> {
                // Read to its end, so that a malformed array is reported as malformed JSON.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeObject(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<MaybeObject, E> {
                Ok(MaybeObject(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<MaybeObject, E> {
                Ok(MaybeObject(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<MaybeObject, E> {
                Ok(MaybeObject(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<MaybeObject, E> {
                Ok(MaybeObject(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<MaybeObject, E> {
                Ok(MaybeObject(None))
            }

            fn visit_unit<E>(self) -> Result<MaybeObject, E> {
                Ok(MaybeObject(None))
            }
        }

        deserializer.deserialize_any(ObjectVisitor)
    }
}

/// One part of a multipart form.
#[derive(Debug)]
pub struct FormPart {
    pub name: String,
    /// The part's header block, ending in the blank line.
    pub head: Bytes,
    pub value: PartValue,
}

#[derive(Debug)]
pub enum PartValue {
    Text(Bytes),
    /// A byte range of the request's replay.
    File(std::ops::Range<u64>),
}

/// A transcription or translation upload.
#[derive(Debug)]
pub struct FormBody {
    pub boundary: String,
    pub parts: Vec<FormPart>,
    pub replay: Arc<Replay>,
}

#[derive(Debug)]
pub enum Payload {
    Json(JsonBody),
    Form(FormBody),
    Raw(Arc<Replay>),
}

impl FormBody {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.parts.iter().find_map(|p| match &p.value {
            PartValue::Text(t) if p.name == name => std::str::from_utf8(t).ok(),
            _ => None,
        })
    }
}

impl JsonBody {
    fn voice(&self) -> Option<&str> {
        match self.object.get("voice")? {
            Value::String(s) => Some(s),
            Value::Object(o) => o.get("id")?.as_str(),
            _ => None,
        }
    }
}

impl Payload {
    pub fn model(&self) -> Option<&str> {
        match self {
            Payload::Json(j) => j.object.get("model")?.as_str(),
            Payload::Form(f) => f.text("model"),
            Payload::Raw(_) => None,
        }
    }

    /// A voice name, or the `id` of a voice object.
    pub fn voice(&self) -> Option<&str> {
        match self {
            Payload::Json(j) => j.voice(),
            Payload::Form(_) | Payload::Raw(_) => None,
        }
    }

    /// As sent, else the API's default for the endpoint.
    pub fn response_format(&self) -> Option<&str> {
        match self {
            Payload::Json(j) => Some(
                j.object
                    .get("response_format")
                    .and_then(Value::as_str)
                    .unwrap_or("mp3"),
            ),
            Payload::Form(f) => Some(f.text("response_format").unwrap_or("json")),
            Payload::Raw(_) => None,
        }
    }

    /// What the request is billed by: a speech `input`'s Unicode scalar values, or the
    /// bytes of an upload's `file` parts; 0 for anything else.
    pub fn billed_units(&self) -> u64 {
        match self {
            Payload::Json(j) => j
                .object
                .get("input")
                .and_then(Value::as_str)
                .map_or(0, |input| input.chars().count() as u64),
            Payload::Form(f) => f
                .parts
                .iter()
                .filter(|p| p.name == "file")
                .map(|p| match &p.value {
                    PartValue::File(range) => range.end - range.start,
                    PartValue::Text(text) => text.len() as u64,
                })
                .sum(),
            Payload::Raw(_) => 0,
        }
    }

    /// Whether the client asked for a streamed (SSE) answer.
    pub fn stream(&self) -> bool {
        match self {
            Payload::Json(j) => {
                j.object.get("stream_format").and_then(Value::as_str) == Some("sse")
            }
            Payload::Form(f) => f
                .text("stream")
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("true")),
            Payload::Raw(_) => false,
        }
    }

    /// Why this request cannot go to an upstream with these edits, if it cannot.
    pub fn refusal(&self, edits: &Edits<'_>) -> Option<String> {
        if edits.dialect.only_listed_models {
            let model: Option<std::borrow::Cow<'_, str>> =
                match edits.set.iter().find(|(k, _)| k == "model") {
                    Some((_, v)) => Some(v.as_form_text().into()),
                    None => self.model().map(Into::into),
                };
            if let Some(model) = model {
                let sent = edits
                    .model_map
                    .get(model.as_ref())
                    .map_or(model.as_ref(), String::as_str);
                if let Some(why) = edits.dialect.refuses_model(sent) {
                    return Some(why);
                }
            }
        }
        let Payload::Json(j) = self else { return None };
        let set = edits
            .set
            .iter()
            .find(|(k, _)| k == "voice")
            .map(|(_, v)| v.to_json());
        let voice = match &set {
            Some(v) => v,
            None => j.object.get("voice")?,
        };
        edits.dialect.voice_for(voice, edits.voice_map).err()
    }

    /// The body for one attempt, with `edits` applied.
    pub fn render(&self, edits: &Edits<'_>) -> Vec<Segment> {
        match self {
            Payload::Json(j) => vec![Segment::Bytes(render_json(j, edits))],
            Payload::Form(f) => render_form(f, edits),
            Payload::Raw(s) => vec![Segment::Replay(s.clone(), 0..s.len())],
        }
    }
}

fn render_json(body: &JsonBody, edits: &Edits<'_>) -> Bytes {
    // The object is copied only when a value actually changes.
    let mut object: Option<JsonObject> = None;
    fn current<'a>(
        object: &'a Option<JsonObject>,
        body: &'a JsonBody,
        key: &str,
    ) -> Option<&'a Value> {
        object.as_ref().unwrap_or(&body.object).get(key)
    }
    let put = |object: &mut Option<JsonObject>, key: &str, value: Value| {
        object
            .get_or_insert_with(|| body.object.clone())
            .insert(key.to_string(), value);
    };
    let dropped: Vec<&String> = body
        .object
        .iter()
        .filter(|(k, v)| edits.drops(k, v.as_str()))
        .map(|(k, _)| k)
        .collect();
    for key in dropped {
        object
            .get_or_insert_with(|| body.object.clone())
            .shift_remove(key);
    }
    for (key, value) in edits.set {
        let value = value.to_json();
        if current(&object, body, key) != Some(&value) {
            put(&mut object, key, value);
        }
    }
    let mapped = match current(&object, body, "model") {
        Some(Value::String(model)) => edits.model_map.get(model),
        _ => None,
    };
    if let Some(mapped) = mapped {
        put(&mut object, "model", Value::String(mapped.clone()));
    }
    // A voice the engine cannot take was refused before rendering; here it is mapped.
    let voice = current(&object, body, "voice")
        .and_then(|v| edits.dialect.voice_for(v, edits.voice_map).ok().flatten());
    if let Some(voice) = voice {
        put(&mut object, "voice", voice);
    }
    match object {
        None => body.raw.clone(),
        // Cannot fail: every key is a string and every value a `Value`.
        Some(object) => Bytes::from(serde_json::to_vec(&object).unwrap_or_default()),
    }
}

fn render_form(form: &FormBody, edits: &Edits<'_>) -> Vec<Segment> {
    let mut segments = Vec::with_capacity(form.parts.len() + 2);
    let mut buf = BytesMut::new();
    let delimiter = |buf: &mut BytesMut| {
        buf.put_slice(b"--");
        buf.put_slice(form.boundary.as_bytes());
        buf.put_slice(b"\r\n");
    };
    for part in &form.parts {
        if let PartValue::Text(text) = &part.value {
            if edits.drops(&part.name, std::str::from_utf8(text).ok()) {
                continue;
            }
        }
        delimiter(&mut buf);
        buf.put_slice(&part.head);
        match &part.value {
            PartValue::Text(text) => {
                let replaced = text_edit(&part.name, text, edits);
                buf.put_slice(replaced.as_deref().unwrap_or(text));
            }
            PartValue::File(range) => {
                segments.push(Segment::Bytes(buf.split().freeze()));
                segments.push(Segment::Replay(form.replay.clone(), range.clone()));
            }
        }
        buf.put_slice(b"\r\n");
    }
    let mut added: Vec<(&str, String)> = Vec::new();
    for (key, value) in edits.set {
        if !form.parts.iter().any(|p| p.name == *key) {
            let text = value.as_form_text();
            let mapped = (key == "model")
                .then(|| edits.model_map.get(&text).cloned())
                .flatten()
                .unwrap_or(text);
            added.push((key, mapped));
        }
    }
    let absent = |name: &str| !form.parts.iter().any(|p| p.name == name) && !edits.sets(name);
    if edits.convert == Convert::TranscriptSse && absent("response_format") {
        added.push(("response_format", "json".to_string()));
    }
    if edits.translate && absent("translate") {
        added.push(("translate", "true".to_string()));
    }
    for (key, text) in added {
        delimiter(&mut buf);
        buf.put_slice(format!("Content-Disposition: form-data; name=\"{key}\"\r\n\r\n").as_bytes());
        buf.put_slice(text.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"--");
    buf.put_slice(form.boundary.as_bytes());
    buf.put_slice(b"--\r\n");
    segments.push(Segment::Bytes(buf.freeze()));
    segments.retain(|s| !s.is_empty());
    segments
}

/// The new value of a text part, if an edit changes it.
fn text_edit(name: &str, text: &[u8], edits: &Edits<'_>) -> Option<Vec<u8>> {
    let set = edits
        .set
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, v)| v.as_form_text())
        .or_else(|| {
            // The engine's JSON answer is what a synthesized stream is made from.
            (edits.convert == Convert::TranscriptSse && name == "response_format")
                .then(|| "json".to_string())
        });
    let value = set.as_deref().map(str::as_bytes).unwrap_or(text);
    let mapped = match name {
        "model" => std::str::from_utf8(value)
            .ok()
            .and_then(|m| edits.model_map.get(m)),
        _ => None,
    };
    match (mapped, set) {
        (Some(m), _) => Some(m.as_bytes().to_vec()),
        (None, Some(s)) if s.as_bytes() != text => Some(s.into_bytes()),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::replay::{MemoryBudget, ReplayLimits, ReplayWriter};
    use futures_util::TryStreamExt;

    fn maps(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn json(text: &str) -> Payload {
        let raw = Bytes::copy_from_slice(text.as_bytes());
        let object = JsonObject::parse(&raw).unwrap().expect("an object");
        Payload::Json(JsonBody { raw, object })
    }

    async fn rendered(payload: &Payload, edits: &Edits<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in payload.render(edits) {
            match s {
                Segment::Bytes(b) => out.extend_from_slice(&b),
                Segment::Replay(replay, r) => {
                    let chunks: Vec<Bytes> = replay.stream(r).try_collect().await.unwrap();
                    out.extend_from_slice(&chunks.concat());
                }
            }
        }
        out
    }

    #[test]
    fn json_that_is_not_utf8_is_refused_with_where() {
        let e = JsonObject::parse(b"{\"model\": \"tts-1\", \"input\": \"caf\xe9\"}").unwrap_err();
        assert!(e.to_string().contains("not UTF-8 (at byte 32)"), "{e}");
        let ok = JsonObject::parse("{\"input\": \"café\"}".as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(ok.get("input"), Some(&Value::from("café")));
    }

    #[tokio::test]
    async fn json_without_changes_is_sent_byte_for_byte() {
        let text = r#"{"voice":"af_sky", "model":"tts-1","input":"hi"}"#;
        let p = json(text);
        let none = HashMap::new();
        let other = maps(&[("alloy", "nova")]);
        let set = vec![("model".to_string(), FieldValue::String("tts-1".into()))];
        let e = Edits::plain(&set, &none, &other);
        assert_eq!(rendered(&p, &e).await, text.as_bytes());
    }

    #[tokio::test]
    async fn json_rewrites_keep_unknown_keys() {
        let p = json(
            r#"{"model":"kokoro","voice":"af_sky","input":"hi","lang_code":"a","normalization_options":{"x":1}}"#,
        );
        let set = vec![("speed".to_string(), FieldValue::Float(1.25))];
        let mm = maps(&[("kokoro", "tts-1")]);
        let vm = maps(&[("af_sky", "nova")]);
        let out = rendered(&p, &Edits::plain(&set, &mm, &vm)).await;
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "tts-1");
        assert_eq!(v["voice"], "nova");
        assert_eq!(v["speed"], 1.25);
        assert_eq!(v["lang_code"], "a");
        assert_eq!(v["normalization_options"]["x"], 1);
    }

    #[tokio::test]
    async fn set_applies_before_the_upstream_maps() {
        let p = json(r#"{"model":"tts-1","voice":"alloy","input":"hi"}"#);
        let set = vec![("model".to_string(), FieldValue::String("kokoro".into()))];
        let mm = maps(&[("kokoro", "tts-1-hd")]);
        let none = HashMap::new();
        let out = rendered(&p, &Edits::plain(&set, &mm, &none)).await;
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "tts-1-hd");
    }

    #[test]
    fn voice_objects_are_read_by_id_and_defaults_apply() {
        let p = json(r#"{"model":"gpt-4o-mini-tts","voice":{"id":"voice_123"},"input":"hi"}"#);
        assert_eq!(p.voice(), Some("voice_123"));
        assert_eq!(p.response_format(), Some("mp3"));
        assert!(!p.stream());
        let p = json(r#"{"model":"m","voice":"v","stream_format":"sse","response_format":"pcm"}"#);
        assert!(p.stream());
        assert_eq!(p.response_format(), Some("pcm"));
    }

    async fn form() -> Payload {
        let mut w = ReplayWriter::new(ReplayLimits {
            memory_per_request: 1024,
            budget: Arc::new(MemoryBudget::new(1024)),
            spill_dir: None,
        });
        w.push(Bytes::from_static(b"RIFFdata")).await.unwrap();
        let replay = Arc::new(w.finish().await.unwrap());
        let text = |name: &str, value: &'static str| FormPart {
            name: name.to_string(),
            head: Bytes::from(format!(
                "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"
            )),
            value: PartValue::Text(Bytes::from_static(value.as_bytes())),
        };
        Payload::Form(FormBody {
            boundary: "XyZ".into(),
            parts: vec![
                FormPart {
                    name: "file".into(),
                    head: Bytes::from_static(b"Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"),
                    value: PartValue::File(0..8),
                },
                text("model", "whisper-1"),
                text("stream", "True"),
            ],
            replay,
        })
    }

    #[tokio::test]
    async fn forms_render_with_the_client_boundary_and_replace_only_text() {
        let p = form().await;
        assert_eq!(p.model(), Some("whisper-1"));
        assert!(p.stream());
        assert_eq!(p.response_format(), Some("json"));
        let set = vec![
            ("language".to_string(), FieldValue::String("en".into())),
            ("model".to_string(), FieldValue::String("large-v3".into())),
        ];
        let mm = maps(&[("large-v3", "Systran/faster-whisper-large-v3")]);
        let none = HashMap::new();
        let out = rendered(&p, &Edits::plain(&set, &mm, &none)).await;
        let expected = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFFdata\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nSystran/faster-whisper-large-v3\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\nTrue\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--XyZ--\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[tokio::test]
    async fn an_unedited_form_is_its_own_length() {
        let p = form().await;
        let none = HashMap::new();
        let edits = Edits::plain(&[], &none, &none);
        let out = rendered(&p, &edits).await;
        let sized: u64 = p.render(&edits).iter().map(Segment::len).sum();
        assert_eq!(out.len() as u64, sized);
        // The file part is a replay range, not a copy.
        assert!(p
            .render(&Edits::plain(&[], &none, &none))
            .iter()
            .any(|s| matches!(s, Segment::Replay(..))));
    }
}
