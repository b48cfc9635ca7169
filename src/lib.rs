//! voxgate: a routing, streaming, falling-back reverse proxy for the OpenAI audio API.
pub mod body;
pub mod config;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod request;
pub mod route;
pub mod server;
pub mod telemetry;
pub mod upstream;
