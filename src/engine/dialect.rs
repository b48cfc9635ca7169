//! Upstream kinds: what an engine accepts and how voxgate adapts a request to it.
//!
//! `kind = "openai" | "kokoro" | "whisper-cpp" | "speaches" | "generic"` on an upstream
//! selects a preset from `src/kinds.toml` (compiled in); any key written on the upstream
//! overrides the preset's. The result is a [`Dialect`]: the paths the engine serves, what
//! it can stream, which voices and fields it takes. [`Dialect::voice_for`] and
//! [`Dialect::conversion`] decide, per attempt, what the request must look like for this
//! engine — or that it cannot be sent there at all.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::route::Operation;

/// The presets, as shipped.
const KINDS_TOML: &str = include_str!("kinds.toml");

/// An upstream's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    #[default]
    Generic,
    Openai,
    Kokoro,
    WhisperCpp,
    Speaches,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Generic,
        Kind::Openai,
        Kind::Kokoro,
        Kind::WhisperCpp,
        Kind::Speaches,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Generic => "generic",
            Kind::Openai => "openai",
            Kind::Kokoro => "kokoro",
            Kind::WhisperCpp => "whisper-cpp",
            Kind::Speaches => "speaches",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// This kind's preset from `kinds.toml`.
    pub fn preset(self) -> Result<&'static Preset, String> {
        static PRESETS: OnceLock<Result<HashMap<String, Preset>, String>> = OnceLock::new();
        let presets =
            PRESETS.get_or_init(|| toml::from_str(KINDS_TOML).map_err(|e| e.message().to_string()));
        match presets {
            Ok(map) => map
                .get(self.name())
                .ok_or_else(|| format!("kind `{}` is missing from kinds.toml", self.name())),
            Err(e) => Err(format!("the built-in kinds.toml is invalid: {e}")),
        }
    }
}

/// The dialect keys, as a preset or an upstream's own table writes them; absent keys
/// leave the value below them as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub health: Option<String>,
    #[serde(default)]
    pub paths: HashMap<String, String>,
    pub sse_speech: Option<bool>,
    pub sse_transcription: Option<bool>,
    pub voice_objects: Option<bool>,
    pub blends: Option<bool>,
    pub drop_language: Option<Vec<String>>,
    #[serde(default)]
    pub drop_fields: HashMap<String, Vec<String>>,
    pub translate_field: Option<bool>,
    pub lists_models: Option<String>,
    pub lists_voices: Option<String>,
    pub models: Option<Vec<String>>,
    pub only_listed_models: Option<bool>,
    pub voices: Option<Vec<String>>,
    #[serde(default)]
    pub model_map: HashMap<String, String>,
    #[serde(default)]
    pub voice_map: HashMap<String, String>,
    #[serde(default)]
    pub voice_by_gender: HashMap<String, String>,
}

/// How to talk to one upstream, its kind's preset and its own keys combined.
#[derive(Debug, Clone, PartialEq)]
pub struct Dialect {
    pub kind: Kind,
    /// Request paths that differ from OpenAI's, per endpoint.
    pub paths: Vec<(Operation, String)>,
    pub sse_speech: bool,
    pub sse_transcription: bool,
    pub voice_objects: bool,
    pub blends: bool,
    pub drop_language: Vec<String>,
    /// Body fields left out, per endpoint.
    pub drop_fields: Vec<(Operation, Vec<String>)>,
    pub translate_field: bool,
    pub lists_models: Option<String>,
    pub lists_voices: Option<String>,
    pub models: Vec<String>,
    /// Requests for a model not in `models` are not sent here (the engine refuses them).
    pub only_listed_models: bool,
    pub voices: Vec<String>,
    /// Female and male voice for Kokoro-style names the voice map lacks.
    pub voice_by_gender: Option<(String, String)>,
}

impl Default for Dialect {
    /// `generic`: everything is passed on as the client sent it.
    fn default() -> Self {
        Dialect {
            kind: Kind::Generic,
            paths: Vec::new(),
            sse_speech: true,
            sse_transcription: true,
            voice_objects: true,
            blends: true,
            drop_language: Vec::new(),
            drop_fields: Vec::new(),
            translate_field: false,
            lists_models: None,
            lists_voices: None,
            models: Vec::new(),
            only_listed_models: false,
            voices: Vec::new(),
            voice_by_gender: None,
        }
    }
}

/// A response voxgate rewrites because the engine cannot produce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convert {
    /// Sent and answered as the client asked.
    None,
    /// `stream_format = "sse"` speech from an engine that sends raw audio: each audio
    /// chunk becomes a `speech.audio.delta` event as it arrives.
    SpeechSse,
    /// `stream = true` transcription from an engine that answers JSON: the text becomes
    /// one `transcript.text.delta` and a `transcript.text.done` event.
    TranscriptSse,
}

impl Dialect {
    /// Applies `keys` over this dialect; maps go to `model_map`/`voice_map` (merged,
    /// `keys` winning). Returns the keys (`paths.x`, `drop_fields.x`) whose endpoint name
    /// is unknown.
    pub fn overlay(
        &mut self,
        keys: &Preset,
        model_map: &mut HashMap<String, String>,
        voice_map: &mut HashMap<String, String>,
    ) -> Vec<String> {
        let mut unknown = Vec::new();
        let audio = |name: &str| Operation::from_name(name).filter(|e| *e != Operation::Other);
        for (name, path) in &keys.paths {
            match audio(name) {
                Some(endpoint) => {
                    self.paths.retain(|(e, _)| *e != endpoint);
                    self.paths.push((endpoint, path.clone()));
                }
                None => unknown.push(format!("paths.{name}")),
            }
        }
        for (name, fields) in &keys.drop_fields {
            match audio(name) {
                Some(endpoint) => {
                    self.drop_fields.retain(|(e, _)| *e != endpoint);
                    self.drop_fields.push((endpoint, fields.clone()));
                }
                None => unknown.push(format!("drop_fields.{name}")),
            }
        }
        let set = |target: &mut bool, value: Option<bool>| {
            if let Some(v) = value {
                *target = v;
            }
        };
        set(&mut self.sse_speech, keys.sse_speech);
        set(&mut self.sse_transcription, keys.sse_transcription);
        set(&mut self.voice_objects, keys.voice_objects);
        set(&mut self.blends, keys.blends);
        set(&mut self.translate_field, keys.translate_field);
        set(&mut self.only_listed_models, keys.only_listed_models);
        let replace = |target: &mut Vec<String>, value: &Option<Vec<String>>| {
            if let Some(v) = value {
                target.clone_from(v);
            }
        };
        replace(&mut self.drop_language, &keys.drop_language);
        replace(&mut self.models, &keys.models);
        replace(&mut self.voices, &keys.voices);
        if keys.lists_models.is_some() {
            self.lists_models.clone_from(&keys.lists_models);
        }
        if keys.lists_voices.is_some() {
            self.lists_voices.clone_from(&keys.lists_voices);
        }
        if let (Some(f), Some(m)) = (keys.voice_by_gender.get("f"), keys.voice_by_gender.get("m")) {
            self.voice_by_gender = Some((f.clone(), m.clone()));
        }
        for (k, v) in &keys.model_map {
            model_map.insert(k.clone(), v.clone());
        }
        for (k, v) in &keys.voice_map {
            voice_map.insert(k.clone(), v.clone());
        }
        unknown
    }

    /// The body fields left out of an `endpoint` request.
    pub fn dropped(&self, endpoint: Operation) -> &[String] {
        self.drop_fields
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map_or(&[], |(_, fields)| fields.as_slice())
    }

    /// The path to send an `endpoint` request to, if it is not the client's.
    pub fn path(&self, endpoint: Operation) -> Option<&str> {
        self.paths
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, p)| p.as_str())
    }

    /// The voice to send instead of `voice` (a name or a voice object), `Ok(None)` to send
    /// it unchanged, or why this engine cannot take it.
    pub fn voice_for(
        &self,
        voice: &Value,
        voice_map: &HashMap<String, String>,
    ) -> Result<Option<Value>, String> {
        let (name, object) = match voice {
            Value::String(s) => (s.as_str(), false),
            Value::Object(o) => match o.get("id").and_then(Value::as_str) {
                Some(id) => (id, true),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let mut chosen = name;
        if !self.blends && is_blend(name) {
            chosen = dominant_voice(name).ok_or_else(|| {
                format!(
                    "voice blend `{}` cannot be reduced to one voice",
                    printable(name)
                )
            })?;
        }
        let mapped = voice_map.get(chosen).map(String::as_str).or_else(|| {
            let (female, male) = self.voice_by_gender.as_ref()?;
            if self.voices.iter().any(|v| v == chosen) {
                return None;
            }
            match kokoro_gender(chosen)? {
                b'f' => Some(female.as_str()),
                _ => Some(male.as_str()),
            }
        });
        let result = mapped.unwrap_or(chosen);
        let unchanged = result == name && (!object || self.voice_objects);
        Ok((!unchanged).then(|| Value::String(result.to_string())))
    }

    /// Why a request for `model` (as this upstream would get it) cannot be sent here.
    /// Callers may skip it when `only_listed_models` is off: it then refuses nothing.
    pub fn refuses_model(&self, model: &str) -> Option<String> {
        (self.only_listed_models && !self.models.iter().any(|m| m == model)).then(|| {
            format!(
                "it serves only the models {}, not `{}`",
                self.models.join(", "),
                printable(model)
            )
        })
    }

    /// Whether the answer must be converted for the client, or why it cannot be.
    pub fn conversion(
        &self,
        endpoint: Operation,
        stream: bool,
        response_format: Option<&str>,
    ) -> Result<Convert, String> {
        match endpoint {
            Operation::Speech if stream && !self.sse_speech => Ok(Convert::SpeechSse),
            Operation::Transcriptions if stream && !self.sse_transcription => match response_format
            {
                None | Some("json" | "text") => Ok(Convert::TranscriptSse),
                Some(other) => Err(format!(
                    "a streamed transcription cannot be made from response_format `{}`; \
                         use json or text",
                    printable(other)
                )),
            },
            _ => Ok(Convert::None),
        }
    }
}

/// At most 64 printable characters of a client's value, for messages.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn is_blend(voice: &str) -> bool {
    voice.contains(['+', '(', ')'])
}

/// The voice with the largest weight in a Kokoro blend (`af_bella(2)+af_sky` → af_bella);
/// the first on a tie. `None` if the blend is malformed.
pub fn dominant_voice(blend: &str) -> Option<&str> {
    let mut best: Option<(&str, f64)> = None;
    for term in blend.split('+') {
        let term = term.trim();
        let (name, weight) = match term.split_once('(') {
            Some((name, rest)) => {
                let weight: f64 = rest.strip_suffix(')')?.trim().parse().ok()?;
                (name.trim(), weight)
            }
            None => (term, 1.0),
        };
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name || !weight.is_finite() || weight <= 0.0 {
            return None;
        }
        if best.is_none_or(|(_, w)| weight > w) {
            best = Some((name, weight));
        }
    }
    best.map(|(name, _)| name)
}

/// `f` or `m` for a Kokoro voice name (`af_sky`, `jm_kumo`: language letter, gender
/// letter, underscore, name).
fn kokoro_gender(voice: &str) -> Option<u8> {
    let b = voice.as_bytes();
    let shaped = b.len() > 3
        && b[0].is_ascii_lowercase()
        && matches!(b[1], b'f' | b'm')
        && b[2] == b'_'
        && b[3..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
    // Lazily: `b[1]` exists only when the name is shaped like one.
    shaped.then(|| b[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(kind: Kind) -> (Dialect, HashMap<String, String>) {
        let mut d = Dialect {
            kind,
            ..Dialect::default()
        };
        let mut models = HashMap::new();
        let mut voices = HashMap::new();
        let unknown = d.overlay(kind.preset().unwrap(), &mut models, &mut voices);
        assert!(unknown.is_empty());
        (d, voices)
    }

    #[test]
    fn every_kind_has_a_valid_preset() {
        for kind in Kind::ALL {
            let preset = kind.preset().unwrap();
            for name in preset.paths.keys() {
                assert!(Operation::from_name(name).is_some(), "{name}");
            }
            if !preset.voice_by_gender.is_empty() {
                assert!(preset.voice_by_gender.contains_key("f"));
                assert!(preset.voice_by_gender.contains_key("m"));
            }
        }
    }

    #[test]
    fn voice_modes_own_mapping_is_shipped_for_openai() {
        let (d, map) = dialect(Kind::Openai);
        let expected = [
            ("af_sky", "nova"),
            ("af_sarah", "nova"),
            ("af_alloy", "alloy"),
            ("am_adam", "onyx"),
            ("am_echo", "echo"),
            ("am_onyx", "onyx"),
            ("bm_fable", "fable"),
        ];
        for (kokoro, openai) in expected {
            assert_eq!(
                d.voice_for(&Value::from(kokoro), &map).unwrap(),
                Some(Value::from(openai)),
                "{kokoro}"
            );
        }
        // Every mapped voice is one OpenAI has.
        for target in map.values() {
            assert!(d.voices.contains(target), "{target}");
        }
    }

    #[test]
    fn unlisted_kokoro_voices_map_by_gender_and_openai_voices_stay() {
        let (d, map) = dialect(Kind::Openai);
        let voice = |v: &str| d.voice_for(&Value::from(v), &map).unwrap();
        assert_eq!(voice("jf_alpha"), Some(Value::from("nova")));
        assert_eq!(voice("zm_yunxi"), Some(Value::from("onyx")));
        assert_eq!(voice("nova"), None);
        assert_eq!(voice("my-custom"), None, "not Kokoro-shaped: passed on");
        // Found by fuzzing: names too short to have a gender letter.
        for short in ["", "a", "af", "af_"] {
            assert_eq!(voice(short), None, "{short:?}");
        }
    }

    #[test]
    fn blends_map_by_their_dominant_voice_or_are_refused() {
        assert_eq!(dominant_voice("af_bella(2)+af_sky"), Some("af_bella"));
        assert_eq!(dominant_voice("af_bella+af_sky(3)"), Some("af_sky"));
        assert_eq!(dominant_voice("af_bella+af_sky"), Some("af_bella"));
        assert_eq!(dominant_voice("af_bella(x)+af_sky"), None);
        assert_eq!(dominant_voice("af_bella+"), None);
        let (openai, map) = dialect(Kind::Openai);
        assert_eq!(
            openai
                .voice_for(&Value::from("af_bella(2)+af_sky"), &map)
                .unwrap(),
            Some(Value::from("shimmer"))
        );
        let refused = openai
            .voice_for(&Value::from("af_bella(0)+"), &map)
            .unwrap_err();
        assert!(refused.contains("cannot be reduced"), "{refused}");
        let (kokoro, kmap) = dialect(Kind::Kokoro);
        assert_eq!(
            kokoro
                .voice_for(&Value::from("af_bella(2)+af_sky"), &kmap)
                .unwrap(),
            None,
            "Kokoro takes blends as they are"
        );
    }

    #[test]
    fn voice_objects_become_strings_where_they_are_not_accepted() {
        let object = serde_json::json!({ "id": "voice_123" });
        let (kokoro, kmap) = dialect(Kind::Kokoro);
        assert_eq!(
            kokoro.voice_for(&object, &kmap).unwrap(),
            Some(Value::from("voice_123"))
        );
        let (openai, omap) = dialect(Kind::Openai);
        assert_eq!(openai.voice_for(&object, &omap).unwrap(), None);
    }

    #[test]
    fn streams_are_converted_where_the_engine_cannot_stream() {
        let (kokoro, _) = dialect(Kind::Kokoro);
        let (whisper, _) = dialect(Kind::WhisperCpp);
        let (openai, _) = dialect(Kind::Openai);
        assert_eq!(
            kokoro.conversion(Operation::Speech, true, Some("mp3")),
            Ok(Convert::SpeechSse)
        );
        assert_eq!(
            kokoro.conversion(Operation::Speech, false, Some("mp3")),
            Ok(Convert::None)
        );
        assert_eq!(
            whisper.conversion(Operation::Transcriptions, true, Some("text")),
            Ok(Convert::TranscriptSse)
        );
        assert!(whisper
            .conversion(Operation::Transcriptions, true, Some("srt"))
            .is_err());
        assert_eq!(
            openai.conversion(Operation::Transcriptions, true, Some("json")),
            Ok(Convert::None)
        );
        assert_eq!(whisper.path(Operation::Transcriptions), Some("/inference"));
        assert_eq!(openai.path(Operation::Transcriptions), None);
    }
}
