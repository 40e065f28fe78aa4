//! The picture of the mesh: a page at `/` that draws the whole cluster as this node sees it
//! (every node with its subnet and state, every pair with each end's path, RTT and MTU,
//! coloured by health, the reason on hover), refreshed every two seconds from `/mesh.json`
//! ([`crate::status::Mesh`]).
//!
//! Self-contained: the page, its style and its script are compiled into the binary
//! (`page.html`, `mesh.js`), plain SVG and a few dozen lines of script, no framework, and the
//! page fetches nothing but `/mesh.json` from the node that served it (no CDN, no font, no
//! image), so it works on a node cut off from the internet.
//!
//! The routes are answered by [`answer`], a function of the path and of where the mesh comes
//! from; the HTTP listener (`metrics-address`, [`crate::http`]) serves them beside `/metrics`
//! (`route`).

use std::sync::Arc;

use crate::daemon::report::Report;
use crate::http::{Response, Router};
use crate::status::Mesh;

/// The page: markup and style, then the script, in one document.
pub const PAGE: &str = concat!(
    include_str!("page.html"),
    include_str!("mesh.js"),
    "</script>\n</body>\n</html>\n"
);

/// The paths the picture answers.
pub const PATHS: [&str; 2] = ["/", "/mesh.json"];

/// One answer: its content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The picture's routes on `router`: the page, and the mesh gathered from `report` afresh for
/// each request.
pub(crate) fn route(mut router: Router, report: Arc<Report>) -> Router {
    for path in PATHS {
        let report = report.clone();
        router = router.route(path, move |req| {
            let report = report.clone();
            async move {
                match answer(&req.path, || report.mesh()) {
                    Some(a) => Response::ok(a.content_type, a.body),
                    None => Response::status(crate::http::Status::NotFound),
                }
            }
        });
    }
    router
}

/// The answer for `path`, or `None` for a path that is not the picture's; `mesh` is called
/// only for `/mesh.json`.
pub fn answer(path: &str, mesh: impl FnOnce() -> Mesh) -> Option<Answer> {
    match path {
        "/" => Some(Answer {
            content_type: "text/html; charset=utf-8",
            body: PAGE.as_bytes().to_vec(),
        }),
        "/mesh.json" => Some(Answer {
            content_type: "application/json",
            body: serde_json::to_vec(&mesh()).unwrap_or_default(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::mesh::tests::three;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The one URL in it is the SVG namespace, a name rather than a place.
        let without_ns = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http:", "https:", "//", "src=", "href=", "@import", "url("] {
            let found = without_ns
                .match_indices(needle)
                .map(|(i, _)| &without_ns[i.saturating_sub(30)..(i + 30).min(without_ns.len())])
                .filter(|ctx| !(needle == "//" && is_comment(ctx)))
                .collect::<Vec<_>>();
            assert!(found.is_empty(), "{needle} in the page: {found:?}");
        }
        assert!(PAGE.contains("fetch(\"mesh.json\""));
        assert!(PAGE.trim_end().ends_with("</html>"));
    }

    /// Whether the `//` in `ctx` starts a script comment (a line of its own).
    fn is_comment(ctx: &str) -> bool {
        ctx.lines().any(|l| l.trim_start().starts_with("//"))
    }

    #[test]
    fn the_routes_answer_the_page_and_the_mesh() {
        let page = answer("/", || unreachable!("the page does not gather the mesh")).unwrap();
        assert!(page.content_type.starts_with("text/html"));
        let json = answer("/mesh.json", three).unwrap();
        assert_eq!(json.content_type, "application/json");
        let back: Mesh = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(back, three());
        assert!(answer("/metrics", three).is_none());
        assert_eq!(PATHS.len(), 2);
    }
}
