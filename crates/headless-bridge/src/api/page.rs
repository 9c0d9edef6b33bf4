//! The runs page at `/`: a static HTML page, a style sheet and a small script, compiled into
//! the binary, so the page needs no build step, no separate deployment and nothing from the
//! internet.
//!
//! The files hold no data and are served without authentication; everything the page shows
//! it fetches from the authenticated API (`/v1/runs`, `/v1/runs/{id}/events`, `/v1/adapters`,
//! `/health?deep=1`, `/v1/sessions` and a session's events) with the operator's token in an
//! `Authorization` header. Its browser terminal draws a session's screen from the bridge's own
//! emulator and, once a person takes the session over, types into the session's WebSocket
//! (`/v1/sessions/{id}/attach`) with a single-use ticket, since a WebSocket carries no
//! header. Run logs, final messages and screens are text a CLI printed, so the script puts
//! them on the page as text only, and a strict Content-Security-Policy (scripts from this
//! origin, no inline script or style, no connection elsewhere, no framing) backs that up
//! should a mistake slip in.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");
const TERMINAL_JS: &str = include_str!("page/terminal.js");
const FAVICON_SVG: &str = include_str!("page/favicon.svg");

/// What the page may load and run: only its own files, only from this origin; data only
/// through `fetch` and the attach WebSocket to this origin (CSP Level 3 has `'self'` match
/// `ws:`/`wss:` on the page's own host and port); no plugins, forms, base changes or framing.
/// A colour beyond the 16 base ones is set through the CSSOM (`style.setProperty`), which
/// `style-src 'self'` allows, unlike a `style` attribute in markup.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page, told whether the API wants a token.
#[utoipa::path(
    get, path = "/", tag = "page",
    summary = "The runs page",
    responses((status = 200, description = "The runs page", content_type = "text/html", body = String)),
    security(()),
)]
pub async fn index(State(state): State<AppState>) -> Response {
    let html = render_index(!state.token_digests.is_empty());
    asset("text/html; charset=utf-8", html)
}

/// The page with its `data-auth` set: `token` makes the script ask for the token before its
/// first request, rather than learn it from a refused one, which the browser would log as an
/// error. Whether a token is needed is no secret: any request without one shows it.
fn render_index(tokens_required: bool) -> String {
    let auth = if tokens_required { "token" } else { "none" };
    INDEX_HTML.replace("{{auth}}", auth)
}

/// `GET /assets/page.css`.
#[utoipa::path(
    get, path = "/assets/page.css", tag = "page",
    summary = "The runs page's stylesheet",
    responses((status = 200, description = "The runs page's stylesheet", content_type = "text/css", body = String)),
    security(()),
)]
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

/// `GET /assets/page.js`.
#[utoipa::path(
    get, path = "/assets/page.js", tag = "page",
    summary = "The runs page's script",
    responses((status = 200, description = "The runs page's script", content_type = "text/javascript", body = String)),
    security(()),
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

/// `GET /assets/terminal.js`: the browser terminal's drawing and keys, which `page.js`
/// imports as an ES module.
#[utoipa::path(
    get, path = "/assets/terminal.js", tag = "page",
    summary = "The runs page's terminal module",
    responses((status = 200, description = "The runs page's terminal module", content_type = "text/javascript", body = String)),
    security(()),
)]
pub async fn terminal_script() -> Response {
    asset("text/javascript; charset=utf-8", TERMINAL_JS)
}

/// `GET /assets/favicon.svg`: without one, browsers ask for `/favicon.ico` and log its 404.
#[utoipa::path(
    get, path = "/assets/favicon.svg", tag = "page",
    summary = "The runs page's icon",
    responses((status = 200, description = "The runs page's icon", content_type = "image/svg+xml", body = String)),
    security(()),
)]
pub async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// A static file with the headers every part of the page carries. `no-cache` makes the
/// browser revalidate, so a newer bridge never runs with an older script.
fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: under it the Fetch standard ("append a request `Origin` header")
        // has the page's own POSTs carry `Origin: null`, which a bridge without tokens refuses
        // as foreign. Chromium 156 sends the real origin anyway; other browsers need not.
        // Other sites still get no referrer.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy forbids inline script and style, so the page must not need them: an inline
    /// `<script>`, a `style=` or an `on...=` handler would be blocked in the browser.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = INDEX_HTML.to_ascii_lowercase();
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').expect("a closed tag")];
            assert!(tag.contains("src=\"/assets/"), "inline script: {tag}");
        }
        assert!(!html.contains("<style"), "inline style element");
        assert!(!html.contains(" style="), "inline style attribute");
        let handlers = regex::Regex::new(r"\son[a-z]+\s*=").expect("a valid pattern");
        assert!(!handlers.is_match(&html), "inline event handler");
    }

    /// Data reaches the page only as text; `innerHTML` and friends would parse it as markup.
    /// A screen's colours go through class names or the CSSOM, never a `style` attribute.
    #[test]
    fn the_script_never_parses_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "setAttribute('style'",
            "cssText",
            "eval(",
            "new Function",
        ] {
            for (name, script) in [("page.js", PAGE_JS), ("terminal.js", TERMINAL_JS)] {
                assert!(!script.contains(sink), "{name} uses {sink}");
            }
        }
    }

    #[test]
    fn the_page_says_whether_a_token_is_needed() {
        assert!(render_index(true).contains(r#"<body data-auth="token">"#));
        assert!(render_index(false).contains(r#"<body data-auth="none">"#));
        assert!(!render_index(true).contains("{{"));
    }

    #[test]
    fn the_policy_allows_scripts_from_this_origin_only() {
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
    }
}
