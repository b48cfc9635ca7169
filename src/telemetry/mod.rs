//! What voxgate tells about the requests it served.
pub mod access_log;
