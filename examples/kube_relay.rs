//! The VM rig's Kubernetes control plane (`tests/vm/run.sh` starts it in
//! test mode): a real etcd and kube-apiserver on the host's loopback, with
//! the shipped CRD and RBAC, reached from the guest through one QEMU
//! virtio-serial port (see `tests/common/relay.rs`).
//!
//! `kube_relay DIR SOCKET`: starts the plane, writes what the guest needs
//! into DIR (`ca.crt`, `admin.crt`, `admin.key`, `daemon.token`: a token of
//! the chart's ServiceAccount), then `DIR/ready`; listens on the Unix socket
//! SOCKET for QEMU's chardev and relays until QEMU closes it. The plane
//! stops with this process.

// Linux only (the VM rig, a real kube-apiserver, unix sockets); elsewhere this example is empty.
#![cfg_attr(not(unix), no_main)]
#![cfg(unix)]

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/plane.rs"]
mod plane;

#[allow(dead_code, missing_docs)]
#[path = "../src/k8s/tests/rest.rs"]
mod rest;

#[allow(dead_code, missing_docs)]
#[path = "../tests/common/relay.rs"]
mod relay;

#[allow(dead_code, missing_docs)]
#[path = "../src/testutil.rs"]
mod testutil;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, socket] = &args[..] else {
        eprintln!("usage: kube_relay DIR SOCKET");
        std::process::exit(2);
    };
    // run.sh may die without closing QEMU's socket: go with it.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        eprintln!("kube_relay: prctl: {e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = PathBuf::from(dir);
    let plane = rt.block_on(async {
        let plane = plane::Plane::start().await;
        std::fs::create_dir_all(&dir).expect("relay directory");
        for f in ["ca.crt", "admin.crt", "admin.key"] {
            std::fs::copy(plane.pki(f), dir.join(f)).expect("copy PKI");
        }
        let (ns, sa) = plane::SERVICE_ACCOUNT;
        std::fs::write(dir.join("daemon.token"), plane.token(ns, sa).await).expect("token");
        plane
    });
    let api: std::net::SocketAddr = plane
        .url
        .trim_start_matches("https://")
        .parse()
        .expect("the plane's address");
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).expect("bind the relay socket");
    std::fs::write(dir.join("ready"), plane.url.as_bytes()).expect("ready");
    eprintln!("kube_relay: {} ready, relaying {socket}", plane.url);
    let (stream, _) = listener.accept().expect("QEMU connects");
    let mux = relay::Mux::new(stream.try_clone().expect("socket"));
    mux.demux(stream, Some(api));
    eprintln!("kube_relay: QEMU closed the port; stopping the plane");
    drop(plane);
}
