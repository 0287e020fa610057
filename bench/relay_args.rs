//! The command line shared by `shardgate-relay` and `shardgate-relay-uring`:
//! `--listen ADDR --backend ADDR`.

use std::net::SocketAddr;

/// The listen and backend addresses, or what is wrong with the arguments.
pub fn parse_args(args: &[String]) -> Result<(SocketAddr, SocketAddr), String> {
    let mut listen = None;
    let mut backend = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let addr: SocketAddr = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--listen" => listen = Some(addr),
            "--backend" => backend = Some(addr),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok((
        listen.ok_or("--listen is required")?,
        backend.ok_or("--backend is required")?,
    ))
}
