//! The status page: `GET /ui` (and `/` on the admin listener), served where `/status` is.
//! One HTML file, `ui.html`, built into the binary, whose script reads `/status` and
//! `/metrics` every second and draws what they say: routes and their chains, upstreams and
//! their endpoints, rates and time to first byte as small charts, the last requests that
//! went wrong, the configuration's load and reload. No build step, nothing fetched from
//! anywhere else: the page works with no network.
//!
//! Its Content-Security-Policy allows nothing but the page's own inline script and style,
//! each named by its SHA-256 (CSP Level 2 hash sources, no `'unsafe-inline'`), and fetches
//! from its own origin; the hashes are taken from the page once, when it is first served.

use std::sync::LazyLock;

use base64::Engine;
use http::{header, HeaderValue, Response};
use sha2::{Digest, Sha256};

use crate::body::{full, ProxyBody};

/// The page, whole.
pub const PAGE: &str = include_str!("ui.html");

/// The page's Content-Security-Policy.
static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&policy(PAGE))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// `GET /ui`: the page, never cached (a new voxgate may serve a new page).
pub fn page() -> Response<ProxyBody> {
    let mut response = Response::new(full(PAGE));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, POLICY.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The policy for `page`: its one `<script>` and one `<style>` by hash, `fetch` to its own
/// origin, images from `data:` only (the icon), and nothing else — no frames around it,
/// no forms, no `<base>`.
fn policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_source(inline(page, "script")),
        hash_source(inline(page, "style")),
    )
}

/// The text between `<tag>` and `</tag>`, as the browser hashes it; empty when absent.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    page.find(&open)
        .map(|at| &page[at + open.len()..])
        .and_then(|rest| rest.find(&close).map(|end| &rest[..end]))
        .unwrap_or_default()
}

fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_inline_script_and_style_and_loads_nothing_else() {
        for tag in ["script", "style"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "one <{tag}>");
            assert!(inline(PAGE, tag).len() > 100, "<{tag}> has content");
        }
        // The SVG namespace is a name, not an address that is fetched.
        let page = PAGE.replace("http://www.w3.org/2000/svg", "");
        for outside in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!page.contains(outside), "the page refers to {outside}");
        }
        assert!(!PAGE.contains("innerHTML"), "text goes in as text");
    }

    #[test]
    fn the_policy_names_the_inline_blocks_by_their_hash() {
        let page = "<style>b{}</style><script>go()</script>";
        let policy = policy(page);
        assert!(policy.starts_with("default-src 'none'; "), "{policy}");
        assert!(policy.contains(&format!("script-src {}", hash_source("go()"))));
        assert!(policy.contains(&format!("style-src {}", hash_source("b{}"))));
        assert!(!policy.contains("unsafe"));
        // The empty string's SHA-256, as `echo -n | sha256sum | xxd -r -p | base64` gives.
        assert_eq!(
            hash_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
        let response = page_response_headers();
        assert_eq!(response.0, "text/html; charset=utf-8");
        assert!(response.1.contains("'sha256-"));
    }

    fn page_response_headers() -> (String, String) {
        let response = super::page();
        let header = |name| {
            response.headers()[name]
                .to_str()
                .map(str::to_string)
                .unwrap_or_default()
        };
        (
            header(header::CONTENT_TYPE),
            header(header::CONTENT_SECURITY_POLICY),
        )
    }
}
