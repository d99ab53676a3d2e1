//! Many TCP connections over one byte stream: how the VM rig's guest
//! reaches the host's kube-apiserver on the host's loopback, with no network
//! device in the guest. QEMU carries one virtio-serial port to a Unix socket
//! on the host (`examples/kube_relay.rs`); the guest's test listens on its
//! own loopback and sends each accepted connection through the port, the
//! host opens a matching connection to the API server. TLS runs end to end:
//! the relay only moves bytes.
//!
//! Frames: connection id (u32), kind (u8: open, data, close), length (u32),
//! then the bytes, all big-endian. The guest numbers the connections.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// No frame is larger than one read of a connection (32 KiB); a length
/// beyond this means the stream lost its framing.
const MAX_FRAME: usize = 1 << 20;

const OPEN: u8 = 0;
const DATA: u8 = 1;
const CLOSE: u8 = 2;

/// One end of the stream: the writer and the open connections.
pub struct Mux {
    out: Mutex<Box<dyn Write + Send>>,
    conns: Mutex<HashMap<u32, TcpStream>>,
    next: AtomicU32,
}

impl Mux {
    /// The end that writes frames into `out`.
    pub fn new(out: impl Write + Send + 'static) -> Arc<Mux> {
        Arc::new(Mux {
            out: Mutex::new(Box::new(out)),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
        })
    }

    fn send(&self, id: u32, kind: u8, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut frame = Vec::with_capacity(9 + data.len());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(data);
        let mut out = self.out.lock().map_err(|_| io::ErrorKind::Other)?;
        out.write_all(&frame)?;
        out.flush()
    }

    /// Takes connection `id` in; `announce` runs before its first byte is
    /// read, so the peer knows the connection before any data for it.
    fn add(
        self: &Arc<Self>,
        id: u32,
        tcp: TcpStream,
        announce: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let reader = tcp.try_clone()?;
        if let Ok(mut c) = self.conns.lock() {
            // Ids are never reused: a second connection under one would be
            // closed by the first one's end.
            assert!(
                c.insert(id, tcp).is_none(),
                "relay: connection {id} opened twice"
            );
        }
        announce()?;
        let mux = Arc::clone(self);
        std::thread::spawn(move || mux.pump(id, reader));
        Ok(())
    }

    /// Copies one connection's bytes into frames until it ends.
    fn pump(&self, id: u32, mut tcp: TcpStream) {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.send(id, DATA, &buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        if self.drop_conn(id) {
            let _ = self.send(id, CLOSE, &[]);
        }
    }

    /// Forgets and shuts connection `id`; false when it was already gone.
    /// Both directions: neither kube-rs (hyper over rustls) nor the API
    /// server half-closes a connection and then waits for more.
    fn drop_conn(&self, id: u32) -> bool {
        let gone = self.conns.lock().ok().and_then(|mut c| c.remove(&id));
        gone.map(|t| t.shutdown(Shutdown::Both)).is_some()
    }

    /// Reads frames from `input` until it ends, delivering data to the
    /// connections. With `connect`, an open frame opens a connection to
    /// that address (the host's end).
    pub fn demux(self: &Arc<Self>, mut input: impl Read, connect: Option<SocketAddr>) {
        let mut head = [0u8; 9];
        while input.read_exact(&mut head).is_ok() {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
            assert!(
                len <= MAX_FRAME,
                "relay: a frame of {len} bytes: the stream lost its framing"
            );
            let mut data = vec![0u8; len];
            if input.read_exact(&mut data).is_err() {
                return;
            }
            match (head[4], connect) {
                (OPEN, Some(addr)) => {
                    let opened = TcpStream::connect(addr).and_then(|t| self.add(id, t, || Ok(())));
                    if opened.is_err() {
                        let _ = self.send(id, CLOSE, &[]);
                    }
                }
                (DATA, _) => self.deliver(id, &data),
                (CLOSE, _) => {
                    self.drop_conn(id);
                }
                _ => {}
            }
        }
    }

    fn deliver(&self, id: u32, data: &[u8]) {
        let conn = self
            .conns
            .lock()
            .ok()
            .and_then(|c| c.get(&id).and_then(|t| t.try_clone().ok()));
        if let Some(mut t) = conn {
            if t.write_all(data).is_err() && self.drop_conn(id) {
                let _ = self.send(id, CLOSE, &[]);
            }
        }
    }

    /// The guest's end: every connection accepted on `listener` goes through
    /// the stream. While `cut` is set, the listener's connections are closed
    /// and new ones refused: a node cut off from the API server.
    pub fn serve(self: &Arc<Self>, listener: TcpListener, cut: Arc<AtomicBool>) {
        // The listener's live ids. Held from the `cut` test to the id's entry
        // (and while cutting), so no connection slips through a cut.
        let mine: Arc<Mutex<Vec<u32>>> = Arc::default();
        let (mux, ids, flag) = (Arc::clone(self), Arc::clone(&mine), Arc::clone(&cut));
        std::thread::spawn(move || loop {
            if flag.load(Ordering::SeqCst) {
                if let Ok(mut v) = ids.lock() {
                    for id in v.drain(..) {
                        if mux.drop_conn(id) {
                            let _ = mux.send(id, CLOSE, &[]);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        });
        let mux = Arc::clone(self);
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let Ok(mut ids) = mine.lock() else { break };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let id = mux.next.fetch_add(1, Ordering::Relaxed);
                ids.retain(|i| mux.conns.lock().is_ok_and(|c| c.contains_key(i)));
                if let Err(e) = mux.add(id, tcp, || mux.send(id, OPEN, &[])) {
                    eprintln!("relay: connection {id} could not be opened: {e}");
                    mux.drop_conn(id);
                    break;
                }
                ids.push(id);
            }
        });
    }
}
