//! `GET /health` over plain HTTP, with the standard library only.
//!
//! This file depends on nothing but `std` on purpose: the test kit
//! (`crates/testkit`) compiles it too, so that the container health check
//! (`kvnode healthcheck`), the tests and `cargo xtask` ask a node whether it is
//! up in one and the same way.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Sends `GET /health` to the node at `address` (`host:port`) over plain HTTP
/// and returns the body of its answer when that is 200 (the node's id and
/// clock, as JSON). Needs no runtime, for health checks. Connecting, sending
/// and each read are bounded by `timeout`.
pub fn probe_health(address: &str, timeout: Duration) -> io::Result<String> {
    let target = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("the address resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let http = words.next().is_some_and(|v| v.starts_with("HTTP/1."));
    if !(http && words.next() == Some("200")) {
        return Err(io::Error::other(format!(
            "unexpected answer {status_line:?}"
        )));
    }
    match answer.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_owned()),
        None => Err(io::Error::other("the answer has no end of head")),
    }
}
