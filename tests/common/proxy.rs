//! A TCP proxy between cbdr and a server (Garage), that a test can make
//! misbehave: forward (normal), stall (accept connections and hold every
//! byte, as a storage that stopped answering does), or down (cut every
//! connection and close new ones at once), and resume.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FORWARD: u8 = 0;
const STALL: u8 = 1;
const DOWN: u8 = 2;

struct Shared {
    mode: AtomicU8,
    stop: AtomicBool,
    /// Both sides of every live connection, to cut them.
    live: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`
    /// (`host:port`).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(FORWARD),
            stop: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
        });
        let target = target.to_string();
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, &target, s));
        Proxy { port, shared }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Accept connections but forward nothing, in either direction.
    pub fn stall(&self) {
        self.shared.mode.store(STALL, Ordering::SeqCst);
    }

    /// Cut every connection; close new ones as soon as they are accepted.
    pub fn down(&self) {
        self.shared.mode.store(DOWN, Ordering::SeqCst);
        self.cut();
    }

    /// Forward again (connections held by a stall go on where they were).
    pub fn resume(&self) {
        self.shared.mode.store(FORWARD, Ordering::SeqCst);
    }

    /// Cut the live connections (the mode stays as it is).
    pub fn cut(&self) {
        for s in self.shared.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, target: &str, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        client.set_nonblocking(false).unwrap();
        if shared.mode.load(Ordering::SeqCst) == DOWN {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        {
            let mut live = shared.live.lock().unwrap();
            live.push(client.try_clone().unwrap());
            live.push(server.try_clone().unwrap());
        }
        for (from, to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            let s = shared.clone();
            std::thread::spawn(move || pump(from, to, &s));
        }
    }
}

/// Copies `from` to `to`, holding the bytes while the proxy stalls.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        // While stalled, read nothing: the sender's buffers fill, as with
        // a server that stopped answering.
        match shared.mode.load(Ordering::SeqCst) {
            STALL => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            DOWN => break,
            _ => {}
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // Bytes read just as a stall began are held until it ends.
        while shared.mode.load(Ordering::SeqCst) == STALL && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if shared.mode.load(Ordering::SeqCst) == DOWN || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
