//! The request head: the request line and the headers, read whole before anything is answered.
//!
//! Only what the routes need is kept: the method and the path (the query string apart). The
//! headers are read (so the head's end is found, and its size bounded) and not interpreted: a
//! request is answered the same whatever it asks for in them, and never has a body we read.

/// What a head said, or why it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Head {
    /// A request we can answer.
    Request(Request),
    /// Not a request: answered with this status and closed.
    Refused(Status),
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without the query string (`/metrics`).
    pub path: String,
    /// The query string, without the `?` (empty when absent).
    pub query: String,
}

/// The methods served: reading only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    /// As `Get`, without the body.
    Head,
}

/// The statuses this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderFieldsTooLarge,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub(crate) fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::RequestTimeout => "408 Request Timeout",
            Status::HeaderFieldsTooLarge => "431 Request Header Fields Too Large",
            Status::ServiceUnavailable => "503 Service Unavailable",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }
}

/// Where the head ends in `buf` (the index after the blank line), if it has ended. A bare
/// `\n\n` ends it too (RFC 9112 §2.2 lets a server accept a bare LF as a line end).
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parse a complete head (as [`head_end`] found it).
pub(crate) fn parse(head: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(head) else {
        return Head::Refused(Status::BadRequest);
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Refused(Status::BadRequest);
    };
    if !version.starts_with("HTTP/") {
        return Head::Refused(Status::BadRequest);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Head::Refused(Status::VersionNotSupported);
    }
    // Every header line must at least look like one: a name, a colon. A line that does not is
    // garbage, not a request to guess at.
    for h in lines.take_while(|l| !l.is_empty()) {
        match h.split_once(':') {
            Some((name, _)) if !name.is_empty() && !name.contains([' ', '\t']) => {}
            _ => return Head::Refused(Status::BadRequest),
        }
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Head::Refused(Status::MethodNotAllowed)
        }
        _ => return Head::Refused(Status::BadRequest),
    };
    if !target.starts_with('/') {
        return Head::Refused(Status::BadRequest);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Head::Request(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(method: Method, path: &str, query: &str) -> Head {
        Head::Request(Request {
            method,
            path: path.into(),
            query: query.into(),
        })
    }

    #[test]
    fn requests_parse() {
        let h = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(head_end(h), Some(h.len()));
        assert_eq!(parse(h), req(Method::Get, "/metrics", ""));
        assert_eq!(
            parse(b"HEAD /?a=1 HTTP/1.0\n\n"),
            req(Method::Head, "/", "a=1")
        );
        // Prometheus's own request line and headers.
        let prom = b"GET /metrics HTTP/1.1\r\nHost: 10.0.0.1:9472\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";
        assert_eq!(parse(prom), req(Method::Get, "/metrics", ""));
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nx\r\n\r\n"), Some(16));
    }

    #[test]
    fn what_is_not_a_request_is_refused() {
        for (head, status) in [
            (&b"\x16\x03\x01\x02\x00\x01\r\n\r\n"[..], Status::BadRequest),
            (b"GET /\r\n\r\n", Status::BadRequest),
            (b"GET  / HTTP/1.1\r\n\r\n", Status::BadRequest),
            (b"GET / HTTP/1.1 x\r\n\r\n", Status::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Status::BadRequest),
            (b"GET / HTTP/2.0\r\n\r\n", Status::VersionNotSupported),
            (b"GET / SPDY/3\r\n\r\n", Status::BadRequest),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Status::MethodNotAllowed),
            (b"get / HTTP/1.1\r\n\r\n", Status::BadRequest),
            (
                b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
                Status::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
                Status::BadRequest,
            ),
            (b"GET / HTTP/1.1\r\n\xff\xfe: x\r\n\r\n", Status::BadRequest),
        ] {
            assert_eq!(parse(head), Head::Refused(status), "{head:?}");
        }
    }
}
