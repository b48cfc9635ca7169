//! `voxgate reload`: tells a running voxgate to reload its configuration, by signal (the
//! process named by a pid file gets SIGHUP) or over HTTP (`POST /reload` on its admin
//! listener, which answers with what changed or what is wrong in the file); and reads a
//! running voxgate's `/status` for `voxgate explain --live`.

use std::path::Path;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends SIGHUP to the process whose id `pid_file` holds. The reload's outcome is in
/// that process's log and `/status`.
pub fn signal_reload(pid_file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("{} does not hold a process id", pid_file.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .map_err(|e| format!("cannot signal process {}: {e}", pid.as_raw_nonzero()))?;
    Ok(format!(
        "sent SIGHUP to process {}; its log and /status say how the reload went",
        pid.as_raw_nonzero()
    ))
}

/// `POST {admin}/reload`; the answer's JSON, and whether the reload succeeded.
pub fn admin_reload(admin: &str) -> Result<String, String> {
    let (url, status, body) = ask_admin(admin, http::Method::POST, "/reload")?;
    let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
    // A refused file's errors are printed as voxgate check prints them, a line each.
    if let Some(error) = json.as_ref().and_then(|v| v["error"].as_str()) {
        return Err(format!("the configuration was NOT reloaded:\n{error}"));
    }
    let shown = json
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    if status.is_success() {
        Ok(shown)
    } else {
        Err(format!("{url} answered {status}:\n{shown}"))
    }
}

/// `GET {admin}/status`, for `voxgate explain --live`: the pools as the running voxgate
/// sees them.
pub fn admin_status(admin: &str) -> Result<serde_json::Value, String> {
    let (url, status, body) = ask_admin(admin, http::Method::GET, "/status")?;
    if !status.is_success() {
        return Err(format!(
            "{url} answered {status}: is it the admin listener (`server.admin_listen`)?"
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: the answer is not JSON: {e}"))
}

/// One request to an admin listener, within 60 s: its URL, the answer's status and body.
fn ask_admin(
    admin: &str,
    method: http::Method,
    path: &str,
) -> Result<(http::Uri, http::StatusCode, bytes::Bytes), String> {
    let url: http::Uri = format!("{}{path}", admin.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("`{admin}` is not a URL: {e}"))?;
    if url.scheme_str() != Some("http") {
        return Err(format!(
            "`{admin}`: the admin listener speaks plain http (http://127.0.0.1:PORT)"
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let request = http::Request::builder()
            .method(method)
            .uri(url.clone())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let ask = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{url}: the answer broke off: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(60), ask)
            .await
            .map_err(|_| format!("{url}: no answer within 60 s"))??;
        Ok((url, status, body))
    })
}
