//! What a request cost, estimated from the upstream's price: speech by characters,
//! uploads by minutes of audio (read from the file's header, [`crate::policy::audio`])
//! or, when that is unknown, by MiB.

use std::time::Duration;

/// What an upstream costs, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub tts_per_million_chars: f64,
    pub stt_per_minute: f64,
    /// For an upload whose duration its header does not tell.
    pub stt_per_mib: f64,
}

/// How an upstream is priced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pricing {
    /// Not priced: a local engine.
    Free,
    /// `price = { … }`, the same for every model.
    Flat(Price),
    /// The `openai` kind without a `price`: OpenAI's public audio prices by model.
    OpenAi,
}

impl Pricing {
    /// The price of `model` on this upstream; `None` when it costs nothing.
    pub fn price(&self, model: Option<&str>) -> Option<Price> {
        match self {
            Pricing::Free => None,
            Pricing::Flat(price) => Some(*price),
            Pricing::OpenAi => Some(openai_price(model.unwrap_or_default())),
        }
    }
}

/// OpenAI's public audio prices (openai.com/api/pricing, as of 2026): tts-1 $15 and
/// tts-1-hd $30 per million characters; gpt-4o-mini-tts is billed by tokens, about
/// $0.015 a minute of audio, taken here as $15 per million characters (~1,000 characters
/// a minute); whisper-1 and gpt-4o-transcribe $0.006 a minute, gpt-4o-mini-transcribe
/// $0.003. An upload whose duration is unknown is priced as a minute per MiB (compressed
/// speech). Models not listed get the price of their family's first model.
pub fn openai_price(model: &str) -> Price {
    let tts = match model {
        "tts-1-hd" => 30.0,
        _ => 15.0,
    };
    let stt = match model {
        "gpt-4o-mini-transcribe" => 0.003,
        _ => 0.006,
    };
    Price {
        tts_per_million_chars: tts,
        stt_per_minute: stt,
        stt_per_mib: stt,
    }
}

/// Dollars for `chars` characters of speech.
pub fn speech(price: &Price, chars: u64) -> f64 {
    price.tts_per_million_chars * chars as f64 / 1e6
}

/// Dollars for an upload of `bytes` whose duration is `duration` when known.
pub fn upload(price: &Price, duration: Option<Duration>, bytes: u64) -> f64 {
    match duration {
        Some(d) => price.stt_per_minute * d.as_secs_f64() / 60.0,
        None => price.stt_per_mib * bytes as f64 / 1_048_576.0,
    }
}

/// Dollars as whole nano-dollars, for counters that add integers.
pub fn nano_dollars(dollars: f64) -> u64 {
    (dollars * 1e9).round().clamp(0.0, u64::MAX as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_prices_by_model_and_unit() {
        let hd = openai_price("tts-1-hd");
        assert_eq!(speech(&hd, 1_000_000), 30.0);
        assert!((speech(&openai_price("tts-1"), 4096) - 0.06144).abs() < 1e-12);
        let whisper = openai_price("whisper-1");
        let minute = upload(&whisper, Some(Duration::from_secs(90)), 1);
        assert!((minute - 0.009).abs() < 1e-12);
        let mini = openai_price("gpt-4o-mini-transcribe");
        assert!((upload(&mini, None, 2 * 1_048_576) - 0.006).abs() < 1e-12);
        assert_eq!(Pricing::Free.price(Some("tts-1")), None);
        assert_eq!(nano_dollars(0.06144), 61_440_000);
    }
}
