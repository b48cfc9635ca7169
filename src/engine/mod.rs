//! Engines: what each kind of upstream accepts, and how its answers are made to read like OpenAI's.
pub mod answers;
pub mod dialect;
pub mod errors;
