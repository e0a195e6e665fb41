//! Turns off Nagle's algorithm on this process's TCP connections to PostgreSQL.
//!
//! sqlx (0.9) opens its PostgreSQL sockets without `TCP_NODELAY` and offers no
//! option for it. A message larger than one TCP segment — a group-commit batch's
//! write, a multi-row audit INSERT — then ends in a partial segment that Nagle's
//! algorithm holds back until the segment before it is acknowledged, and the
//! server delays that acknowledgement (40 ms on Linux) waiting for more data. So
//! a batch write stalled for 40 ms whatever the load, with both CPUs idle: one
//! replica on PostgreSQL saturated at ≈ 320 req/s over TCP and ≈ 2,200 req/s over
//! the Unix socket, same code (measured, `aegis bench`, README "Scaling out").
//!
//! After sqlx connects (the pool's `after_connect`, and the group-commit writer's
//! own connection), [`for_peers`] finds the sockets connected to the database's
//! addresses among the process's file descriptors and sets `TCP_NODELAY` on
//! them. It only sets that one option, only on TCP sockets whose peer is the
//! database; a descriptor closed or reused meanwhile makes the call fail
//! harmlessly. Linux only (`/proc/self/fd`); elsewhere it does nothing.

use std::net::SocketAddr;

/// The addresses `host:port` resolves to (nothing for a Unix-socket path).
pub async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    if host.starts_with('/') {
        return Vec::new();
    }
    match tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

/// Sets `TCP_NODELAY` on every socket of this process connected to one of
/// `peers`; returns how many it set.
#[cfg(target_os = "linux")]
pub fn for_peers(peers: &[SocketAddr]) -> usize {
    use std::os::fd::BorrowedFd;
    if peers.is_empty() {
        return 0;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut set = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // Only sockets: the link names them `socket:[inode]`.
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for two system calls that neither
        // close nor take it; if it was closed or reused since it was listed, they
        // fail (EBADF, ENOTSOCK, ENOTCONN) or see another socket, which the peer
        // check then skips.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let connected_to_db =
            socket.peer_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| peers.contains(&a));
        if connected_to_db && socket.set_tcp_nodelay(true).is_ok() {
            set += 1;
        }
    }
    set
}

#[cfg(not(target_os = "linux"))]
pub fn for_peers(_peers: &[SocketAddr]) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the sockets connected to the given peer get the option; others keep
    /// their setting.
    #[tokio::test]
    async fn sets_nodelay_only_on_sockets_to_the_peers() {
        let db = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to_db = tokio::net::TcpStream::connect(db.local_addr().unwrap()).await.unwrap();
        let to_other = tokio::net::TcpStream::connect(other.local_addr().unwrap()).await.unwrap();
        assert!(!to_db.nodelay().unwrap() && !to_other.nodelay().unwrap(), "Nagle is on by default");
        let peers = resolve("127.0.0.1", db.local_addr().unwrap().port()).await;
        assert_eq!(peers, vec![db.local_addr().unwrap()]);
        assert_eq!(for_peers(&peers), 1);
        assert!(to_db.nodelay().unwrap(), "the database connection has TCP_NODELAY");
        assert!(!to_other.nodelay().unwrap(), "another connection is left alone");
        assert!(resolve("/var/run/postgresql", 5432).await.is_empty(), "a Unix socket has no Nagle");
    }
}
