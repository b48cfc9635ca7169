//! The client's request body: read within limits, inspected, kept for replay, re-sent.
pub mod intake;
pub mod multipart;
pub mod outgoing;
pub mod payload;
pub mod replay;
