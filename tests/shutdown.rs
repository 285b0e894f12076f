//! Stopping the master: at SIGTERM, with slaves posting as fast as they can and a live stream
//! open, it stops taking connections, finishes the requests in flight, ends the stream, waits
//! for the database, logs it and exits 0; every result it acknowledged is in the database.

mod util;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use util::sse::Stream;
use util::*;

#[test]
fn sigterm_under_load_finishes_what_it_took_and_exits_0() {
    let dir = Scratch::with_seed_config("shutdown");
    let mut master = Proc::master(&dir.0, &[]);
    let addr = master.addr();
    let mut stream = Stream::open(addr, "/api/v1/stream", &[]);
    assert_eq!(stream.status, 200);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..6)
        .map(|_| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut refused = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = uuid::Uuid::new_v4().to_string();
                    let body = GO_RESULT.replace("3a1b7c55-eabe-4536-a9ed-ec6cbdaaedb0", &id);
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    use std::io::{Read, Write};
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    if s.write_all(&request("POST", "/results/", body.as_bytes()))
                        .is_err()
                    {
                        continue;
                    }
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    if let Some(a) = parse_answer(&buf)
                        && a.status == 200
                        && a.text().contains(r#""Success":true"#)
                    {
                        acked.lock().unwrap().push(id);
                    }
                }
                refused
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = acked.lock().unwrap().len();
    assert!(before > 20, "the load runs: {before} results acknowledged");
    let asked = Instant::now();
    let code = terminate(&mut master, Duration::from_secs(15));
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    let refused: usize = posters.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took < Duration::from_secs(8),
        "the open stream did not hold the shutdown up: {took:?}"
    );
    // The stream ended cleanly (its last chunk came), so its client knows to reconnect.
    let mut ended = false;
    for _ in 0..100_000 {
        if stream.next(Duration::from_secs(2)).is_none() {
            ended = stream.ended();
            break;
        }
    }
    assert!(ended, "the live stream ended with the master");

    let acked = acked.lock().unwrap().clone();
    let stored = stored_ids(&dir.path("dt-results.db"));
    assert!(
        all_in(&acked, &stored),
        "{} acknowledged, {} stored, {} missing",
        acked.len(),
        stored.len(),
        acked.iter().filter(|id| !stored.contains(id)).count()
    );
    assert_unique(&stored);
    let log = std::fs::read_to_string(dir.path("dt-master.log")).unwrap();
    for want in [
        "SIGTERM: stopping",
        "stopped: every result taken in is stored",
    ] {
        assert!(log.contains(want), "{want} missing:\n{log}");
    }
    println!(
        "shutdown under load: {} acknowledged ({before} before SIGTERM), all stored; exit after {took:?}; {refused} connections refused after it",
        acked.len()
    );
}
