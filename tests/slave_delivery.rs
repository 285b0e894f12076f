//! Delivery against a stand-in master that misbehaves in turn (500, 401, garbage, a hang)
//! and then acts as an original Go master (no batch endpoint, one result refused for good):
//! the slave survives each, backs off, sets the refused result aside and delivers the rest
//! once the master is healthy.

mod util;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

const ERROR_500: usize = 0;
const WRONG_PASSWORD: usize = 1;
const GARBAGE: usize = 2;
const HANG: usize = 3;
const HEALTHY: usize = 4;

#[derive(Default)]
struct Standin {
    phase: AtomicUsize,
    /// Requests carrying results, per phase.
    attempts: [AtomicUsize; 5],
    /// IDs answered 200 by the healthy master.
    accepted: Mutex<Vec<String>>,
    /// The ID answered "never acceptable".
    refused: Mutex<Option<String>>,
    batch_posts: AtomicUsize,
}

fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1)?.to_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some((path, body))
}

fn answer(stream: &mut TcpStream, status: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

fn serve(mut stream: TcpStream, s: &Standin) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    while let Some((path, body)) = read_request(&mut stream) {
        if path == "/config/" {
            answer(&mut stream, "200 OK", TARGETS);
            continue;
        }
        let phase = s.phase.load(Ordering::SeqCst);
        s.attempts[phase].fetch_add(1, Ordering::SeqCst);
        match phase {
            ERROR_500 => answer(&mut stream, "500 Internal Server Error", "oops"),
            WRONG_PASSWORD => answer(&mut stream, "401 Unauthorized", "Unauthorized\n"),
            GARBAGE => {
                let _ = stream.write_all(b"\x00\xffNOT HTTP AT ALL\r\n\r\n{{{{");
                return;
            }
            HANG => {
                std::thread::sleep(Duration::from_secs(8));
                return;
            }
            _ if path == "/api/v1/results:batch" => {
                s.batch_posts.fetch_add(1, Ordering::SeqCst);
                answer(&mut stream, "404 Not Found", "404 page not found\n");
            }
            _ if s.refused.lock().unwrap().is_none() => {
                // The first result of the healthy phase is refused for good, as an original
                // master does with one that fails its validation.
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                *s.refused.lock().unwrap() = Some(v["ID"].as_str().unwrap().to_owned());
                answer(
                    &mut stream,
                    "200 OK",
                    r#"{"Success":false,"Error":"Result validation failed: HopCount","RetryPossible":false}"#,
                );
            }
            _ => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                s.accepted
                    .lock()
                    .unwrap()
                    .push(v["ID"].as_str().unwrap().to_owned());
                answer(
                    &mut stream,
                    "200 OK",
                    r#"{"Success":true,"Error":"","RetryPossible":true}"#,
                );
            }
        }
    }
}

#[test]
fn a_misbehaving_master_is_survived_and_then_gets_everything() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let standin = Arc::new(Standin::default());
    std::thread::spawn({
        let standin = standin.clone();
        move || {
            for stream in listener.incoming().flatten() {
                let standin = standin.clone();
                std::thread::spawn(move || serve(stream, &standin));
            }
        }
    });
    let dir = Scratch::new("misbehave");
    let log = dir.path("dt-slave.log");
    let mut slave = slave(
        &dir.0,
        addr,
        &["-interval=500ms", "-master-timeout=1s", "-retry-max=1s"],
    );
    for phase in [ERROR_500, WRONG_PASSWORD, GARBAGE, HANG] {
        standin.phase.store(phase, Ordering::SeqCst);
        wait_for(Duration::from_secs(15), || {
            (standin.attempts[phase].load(Ordering::SeqCst) >= 2).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the slave keeps trying in phase {phase}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        assert!(slave.alive(), "the slave survives phase {phase}");
    }
    // Backing off, not hammering: a few tries per second at most, never thousands.
    for phase in [ERROR_500, WRONG_PASSWORD, GARBAGE] {
        let n = standin.attempts[phase].load(Ordering::SeqCst);
        assert!(n < 30, "phase {phase}: {n} attempts");
    }
    standin.phase.store(HEALTHY, Ordering::SeqCst);
    let spooled_but_refused = || -> Vec<String> {
        let refused = standin.refused.lock().unwrap().clone();
        let mut ids = spooled_ids(&log);
        ids.retain(|id| Some(id) != refused.as_ref());
        ids
    };
    wait_for(Duration::from_secs(20), || {
        let spooled = spooled_but_refused();
        (spooled.len() >= 10 && all_in(&spooled, &standin.accepted.lock().unwrap())).then_some(())
    })
    .expect("everything spooled reaches the healthy master");
    assert_eq!(terminate(&mut slave, Duration::from_secs(20)), Some(0));

    let accepted: HashSet<String> = standin.accepted.lock().unwrap().iter().cloned().collect();
    assert!(all_in(&spooled_but_refused(), &Vec::from_iter(accepted)));
    // The refused one is set aside with its reason, not retried forever.
    let refused = standin.refused.lock().unwrap().clone().unwrap();
    let rejected = dir.path("dt-slave.spool").join("rejected");
    let why: Vec<_> = std::fs::read_dir(&rejected)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "why"))
        .collect();
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].to_str().unwrap().contains(&refused));
    let reason = std::fs::read_to_string(&why[0]).unwrap();
    assert!(reason.contains("Result validation failed"), "{reason}");
    assert!(
        standin.batch_posts.load(Ordering::SeqCst) >= 1,
        "the batch endpoint was tried before falling back"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("refused this slave's name or password (401)"),
        "a 401 is said loudly"
    );
    assert!(text.contains("has no batch endpoint"), "{text}");
    assert!(text.contains(&format!("refused result {refused} for good")));
}
