//! The listener over real loopback TCP: routes, refusals, and the bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn server() -> (Server, Arc<Counters>) {
    server_with(Limits::default()).await
}

async fn server_with(limits: Limits) -> (Server, Arc<Counters>) {
    let router = Router::new()
        .route("/metrics", |_| async {
            Response::ok("text/plain; version=0.0.4", "meshd_up 1\n")
        })
        .route("/echo", |r: Request| async move {
            Response::ok("text/plain", r.query.into_bytes())
        });
    let counters = Arc::new(Counters::default());
    let s = Server::start(
        "127.0.0.1:0".parse().unwrap(),
        router,
        counters.clone(),
        limits,
    )
    .await
    .unwrap();
    (s, counters)
}

/// Send `bytes`, read the whole answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    // A peer that stops reading (431 closes early) may reset the rest of a long write.
    let _ = c.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn routes_answer_and_unknown_paths_do_not() {
    let (s, counters) = server().await;
    let a = exchange(s.addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(a.contains("Content-Length: 11\r\n"), "{a}");
    assert!(a.contains("Connection: close\r\n"), "{a}");
    assert!(a.ends_with("\r\n\r\nmeshd_up 1\n"), "{a}");
    let a = exchange(s.addr(), b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(a.contains("Content-Length: 11\r\n"), "{a}");
    assert!(a.ends_with("\r\n\r\n"), "a HEAD gets no body: {a}");
    let a = exchange(s.addr(), b"GET /echo?x=1 HTTP/1.0\r\n\r\n").await;
    assert!(a.ends_with("\r\n\r\nx=1"), "{a}");
    let a = exchange(s.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 404 Not Found\r\n"), "{a}");
    assert_eq!(load(&counters.served), 3);
    assert_eq!(load(&counters.not_found), 1);
}

#[tokio::test]
async fn garbage_and_huge_heads_are_refused() {
    let (s, counters) = server().await;
    let a = exchange(
        s.addr(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{a}");
    let a = exchange(s.addr(), b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 405 "), "{a}");
    // Headers past the limit, never ended: refused once the limit is passed.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 4 * MAX_HEAD {
        huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let a = exchange(s.addr(), &huge).await;
    assert!(a.starts_with("HTTP/1.1 431 "), "{a}");
    // One that ends, but after the limit.
    huge.extend_from_slice(b"\r\n");
    let a = exchange(s.addr(), &huge).await;
    assert!(a.starts_with("HTTP/1.1 431 "), "{a}");
    assert_eq!(load(&counters.bad), 2);
    assert_eq!(load(&counters.too_large), 2);
    assert_eq!(load(&counters.served), 0);
    // And the listener still serves.
    let a = exchange(s.addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
}

/// Idle connections take at most `connections` slots; the others are turned away at once, and
/// a slot frees when its head times out.
#[tokio::test]
async fn idle_connections_are_bounded_and_time_out() {
    let limits = Limits {
        connections: 4,
        head_timeout: Duration::from_secs(3),
    };
    let (s, counters) = server_with(limits).await;
    let mut idle = Vec::new();
    for _ in 0..limits.connections {
        idle.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    // Every slot is taken (the server accepts in order): more are answered 503 without waiting
    // for their head, a real request too.
    for _ in 0..3 {
        let a = exchange(s.addr(), b"").await;
        assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
    }
    let a = exchange(s.addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
    assert_eq!(load(&counters.busy), 4);
    // The idle ones are answered 408 and closed when their head is overdue.
    for mut c in idle {
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 408 "), "{out:?}");
    }
    assert_eq!(load(&counters.timed_out), 4);
    let a = exchange(s.addr(), b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
}

#[tokio::test]
async fn a_stopped_server_stops_listening() {
    let (s, _) = server().await;
    let addr = s.addr();
    s.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
    // And the address is free again at once.
    let l = tokio::net::TcpListener::bind(addr).await;
    assert!(l.is_ok(), "{l:?}");
}
