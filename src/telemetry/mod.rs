//! What voxgate tells about the requests it served: each request's [`record`], the
//! [`observe`]rs told once when its response is over, and the [`access_log`], one of them.
pub mod access_log;
pub mod observe;
pub mod record;
