//! Configuration mistakes, located: every one with its file, line and column, all of them
//! reported at once.

use std::ops::Range;

/// One mistake in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every mistake found in one configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_diagnostics(file, diagnostics))]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

pub fn render_diagnostics(file: &str, diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| format!("{file}:{}:{}: {}", d.line, d.column, d.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turns byte offsets into 1-based line and column (in characters).
pub struct Locator<'a> {
    pub text: &'a str,
}

impl Locator<'_> {
    pub fn at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            line,
            column,
            message: message.into(),
        }
    }

    pub fn span(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.at(span.start, message)
    }
}

/// The char boundary at or before `index` (`str::floor_char_boundary` is newer than the
/// Rust version voxgate supports).
fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}
