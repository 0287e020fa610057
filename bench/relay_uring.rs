//! `shardgate-relay-uring`: the reference byte relay of `shardgate-relay`, on io_uring
//! (tokio-uring, one thread) instead of epoll. Used to see whether the kernel interface
//! moves the relay's ceiling on this kernel at all (bench/README.md). Same arguments:
//! `--listen ADDR --backend ADDR`.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::ExitCode;
use std::rc::Rc;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

#[path = "relay_args.rs"]
mod relay_args;
use relay_args::parse_args;

const USAGE: &str = "usage: shardgate-relay-uring --listen ADDR --backend ADDR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backend) = match parse_args(&args) {
        Ok(x) => x,
        Err(msg) => {
            eprintln!("shardgate-relay-uring: {msg}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match tokio_uring::start(serve(listen, backend)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate-relay-uring: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("shardgate-relay-uring listening on {listen}, relaying to {backend}");
    loop {
        let (client, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("shardgate-relay-uring: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio_uring::spawn(async move {
            if let Err(e) = pipe(client, backend).await {
                eprintln!("shardgate-relay-uring: {e}");
            }
        });
    }
}

fn nodelay(s: &TcpStream) -> std::io::Result<()> {
    // SAFETY: the descriptor belongs to `s`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) };
    socket2::SockRef::from(&fd).set_tcp_nodelay(true)
}

async fn pipe(client: TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    nodelay(&client)?;
    let server = TcpStream::connect(backend).await?;
    nodelay(&server)?;
    let (client, server) = (Rc::new(client), Rc::new(server));
    let up = tokio_uring::spawn(copy(client.clone(), server.clone()));
    let down = copy(server.clone(), client.clone()).await;
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.await;
    down
}

/// Copies `from` to `to` until `from` ends (one 16 KiB buffer, reused).
async fn copy(from: Rc<TcpStream>, to: Rc<TcpStream>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (r, b) = from.read(buf).await;
        let n = r?;
        if n == 0 {
            return Ok(());
        }
        let (w, b) = to.write_all(b.slice(..n)).await;
        w?;
        buf = b.into_inner();
    }
}
