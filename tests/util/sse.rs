//! A Server-Sent-Events client over a plain socket, for the live stream's tests: reads the
//! chunked body as it arrives and hands out one event at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One event as the stream sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `id:` field ("" without one).
    pub id: String,
    /// Its `event:` field ("message" without one).
    pub event: String,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

impl Event {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.data))
    }
}

/// An open stream.
pub struct Stream {
    reader: BufReader<TcpStream>,
    /// The answer's status code.
    pub status: u16,
    /// The answer's head.
    pub head: String,
    /// Body bytes decoded but not yet split into events.
    pending: Vec<u8>,
    /// Comments (`: …` lines) seen so far.
    pub comments: Vec<String>,
    ended: bool,
}

impl Stream {
    /// `GET path` with extra header lines (each `Name: value`).
    pub fn open(addr: SocketAddr, path: &str, headers: &[&str]) -> Stream {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                Err(_) if Instant::now() < end => continue,
                Err(e) => panic!("no answer head: {e}"),
            }
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Stream {
            reader,
            status,
            head,
            pending: Vec::new(),
            comments: Vec::new(),
            ended: false,
        }
    }

    /// Reads one chunk of the chunked body into `pending`; false at its end (or an error).
    fn read_chunk(&mut self, until: Instant) -> bool {
        let mut size = String::new();
        let hard_end = until.max(Instant::now()) + Duration::from_secs(20);
        loop {
            match self.reader.read_line(&mut size) {
                Ok(0) => return false,
                Ok(_) if size.ends_with('\n') => break,
                Ok(_) => continue,
                // A size line begun is read to its end, whatever `until` says.
                Err(_)
                    if Instant::now() < until
                        || (!size.is_empty() && Instant::now() < hard_end) =>
                {
                    continue;
                }
                Err(_) => return size.is_empty(),
            }
        }
        let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let mut data = vec![0u8; n + 2];
        let mut got = 0;
        while got < data.len() {
            match self.reader.read(&mut data[got..]) {
                Ok(0) => return false,
                Ok(k) => got += k,
                Err(_) if Instant::now() < hard_end => continue,
                Err(_) => return false,
            }
        }
        self.pending.extend_from_slice(&data[..n]);
        true
    }

    /// The next event within `limit`; `None` when none came or the stream ended.
    pub fn next(&mut self, limit: Duration) -> Option<Event> {
        let until = Instant::now() + limit;
        loop {
            if let Some(pos) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&block).into_owned();
                let mut ev = Event {
                    id: String::new(),
                    event: "message".into(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                let mut any = false;
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = v.to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                        any = true;
                    }
                }
                ev.data = data.join("\n");
                if any && !ev.data.is_empty() {
                    return Some(ev);
                }
                continue;
            }
            if self.ended || Instant::now() >= until {
                return None;
            }
            if !self.read_chunk(until) {
                self.ended = true;
            }
        }
    }

    /// True once the body has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }
}
