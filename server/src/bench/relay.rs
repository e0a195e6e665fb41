//! TCP relays for `aegis bench --variants`: a round-robin balancer in front of
//! several replicas (each accepted connection goes to the next backend), and a
//! forwarder that delays every byte by a fixed time each way, standing in for a
//! database on another machine. A delayed chunk does not hold up the ones behind
//! it: each direction is a queue of (due time, bytes), so a delay adds latency,
//! not a throughput cap.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// A listening relay; stops accepting when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Relays each connection to the next of `backends`, delaying each direction by `delay`.
    pub async fn start(backends: Vec<SocketAddr>, delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // The connections go with the relay: dropping it (aborting this task)
            // drops the set, which aborts every connection's task and closes its sockets.
            let mut connections = tokio::task::JoinSet::new();
            let mut next = 0usize;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let inbound = match accepted {
                            Ok((inbound, _)) => inbound,
                            // Out of file descriptors (a row far behind holds thousands of
                            // sockets, four per call through a balancer): wait for some to
                            // close. Stopping here would fail every later call of the row.
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            }
                        };
                        let backend = backends[next % backends.len()];
                        next += 1;
                        connections.spawn(async move {
                            if let Ok(outbound) = TcpStream::connect(backend).await {
                                let _ = inbound.set_nodelay(true);
                                let _ = outbound.set_nodelay(true);
                                relay(inbound, outbound, delay).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, task })
    }
}

async fn relay(mut a: TcpStream, mut b: TcpStream, delay: Duration) {
    if delay.is_zero() {
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        return;
    }
    // Delays below the async timer's millisecond tick: blocking threads, whose
    // sleeps are accurate to tens of µs (a tokio timer rounds each up to the next ms).
    let (Ok(a), Ok(b)) = (a.into_std(), b.into_std()) else { return };
    let _ = tokio::task::spawn_blocking(move || {
        let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
        let _ = (a.set_nonblocking(false), b.set_nonblocking(false));
        let forward = std::thread::spawn(move || delayed(a, b2, delay));
        delayed(b, a2, delay);
        let _ = forward.join();
    })
    .await;
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
fn delayed(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((std::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server behind a delaying relay: bytes arrive intact, one round trip
    /// takes at least twice the delay, and connections alternate between backends.
    #[tokio::test]
    async fn relays_delay_and_balance() {
        let mut backends = Vec::new();
        for id in [b'a', b'b'] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            backends.push(l.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let mut out = vec![id];
                            out.extend_from_slice(&buf[..n]);
                            if s.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
        let relay = Relay::start(backends, Duration::from_millis(20)).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(relay.addr).await.unwrap();
            let started = std::time::Instant::now();
            c.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(40), "{took:?}");
            assert!(
                took < Duration::from_millis(60),
                "{took:?}: the delay is the delay, not a timer tick more"
            );
            assert_eq!(&buf[1..], b"ping");
            seen.push(buf[0]);
        }
        assert_eq!(seen, [b'a', b'b'], "round robin");
    }
}
