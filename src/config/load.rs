//! Loading: a file or text read, parsed into the raw structs, and validated into a
//! [`Config`], or every mistake reported with its place.

use std::path::Path;

use super::diagnostic::{ConfigError, Locator};
use super::raw::RawConfig;
use super::validate::validate;
use super::{Config, DEFAULT_NAME, DEFAULT_TOML};

impl Config {
    /// The built-in default configuration, with the environment applied.
    pub fn builtin() -> Result<Config, ConfigError> {
        Config::from_toml(DEFAULT_TOML, DEFAULT_NAME)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `file` names it in messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, file, &|name| std::env::var(name).ok())
    }

    /// As [`Config::from_toml`], with `${VAR}` looked up through `env`.
    pub fn from_toml_with_env(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let locator = Locator { text };
        let invalid = |diagnostics| ConfigError::Invalid {
            file: file.to_string(),
            diagnostics,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // The message alone: toml's Display would quote the offending line.
            invalid(vec![locator.at(offset, e.message().trim_end().to_string())])
        })?;
        validate(raw, &locator, env).map_err(invalid)
    }

    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}
