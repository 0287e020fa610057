//! `shardgate-relay`: the reference byte relay the benchmarks measure shardgate against.
//!
//! Accept, connect to the backend, `TCP_NODELAY` on both sides, `copy_bidirectional`.
//! It understands nothing of the protocol, so its cost is the floor any proxy on this
//! machine pays for the extra hop (wake-ups, syscalls, copies).
//!
//! usage: shardgate-relay --listen ADDR --backend ADDR
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::{TcpListener, TcpStream};

#[path = "relay_args.rs"]
mod relay_args;
use relay_args::parse_args;

const USAGE: &str = "usage: shardgate-relay --listen ADDR --backend ADDR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backend) = match parse_args(&args) {
        Ok(x) => x,
        Err(msg) => {
            eprintln!("shardgate-relay: {msg}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    // Two workers, like shardgate's `serve`, so the two are measured on equal terms.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardgate-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(listen, backend)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("shardgate-relay listening on {listen}, relaying to {backend}");
    loop {
        let (client, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("shardgate-relay: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = pipe(client, backend).await {
                eprintln!("shardgate-relay: {e}");
            }
        });
    }
}

async fn pipe(mut client: TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut server = TcpStream::connect(backend).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
