//! Goal 4's floor: a bare nginx `proxy_pass` to the same mock upstream, driven
//! by the same closed-loop generator as AEGIS's saturation rows, so "AEGIS's
//! saturation / nginx's" is a ratio of one run. nginx is found as
//! `AEGIS_BENCH_NGINX`, else `nginx` on `PATH`, else `/usr/sbin/nginx`; without
//! one the floor is not measured (the goal prints `-`).
//!
//! The proxy is configured as a fair peer of AEGIS's forwarding: as many workers
//! as cores, HTTP/1.1 with a keep-alive pool to the upstream (AEGIS's client
//! pools too), no access log (AEGIS's durable audit is the job being measured,
//! nginx's logging is not).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The nginx binary to measure with, if there is one.
pub fn binary() -> Option<PathBuf> {
    binary_from("AEGIS_BENCH_NGINX")
}

/// nginx as the environment variable `var` names it, else on `PATH`, else
/// `/usr/sbin/nginx` (Debian's place). The topology test looks it up the same way.
pub fn binary_from(var: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(var) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([PathBuf::from("/usr/sbin/nginx")]).find(|p| p.is_file())
}

/// The whole configuration: listen on `port`, pass everything to `upstream`.
pub fn config(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    format!(
        "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         \x20 upstream mock {{ server {upstream}; keepalive 128; }}\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://mock;\n\
         \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        d = dir.display()
    )
}

/// nginx in the foreground with all its files under a temp directory; stopped
/// (and the directory removed) when dropped.
pub struct Proxy {
    pub base: String,
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Proxy {
    pub async fn start(binary: &Path, upstream: SocketAddr) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("aegis-bench-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| format!("nginx dir: {e}"))?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            probe.local_addr().map_err(|e| e.to_string())?.port()
        };
        std::fs::write(dir.join("nginx.conf"), config(&dir, port, upstream)).map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let proxy = Proxy { base: format!("http://127.0.0.1:{port}"), child, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(proxy);
            }
            if tokio::time::Instant::now() >= deadline {
                let log = std::fs::read_to_string(proxy.dir.join("error.log")).unwrap_or_default();
                return Err(format!("nginx did not listen on {port}: {log}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_passes_to_the_upstream_with_a_keepalive_pool() {
        let conf = config(Path::new("/tmp/x"), 4711, "127.0.0.1:9".parse().unwrap());
        assert!(conf.contains("listen 127.0.0.1:4711;"));
        assert!(conf.contains("server 127.0.0.1:9; keepalive 128;"));
        assert!(conf.contains("proxy_http_version 1.1;"));
        assert!(conf.contains("access_log off;"));
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
    }

    /// With nginx on this machine: it starts, forwards to a real upstream and stops.
    #[tokio::test]
    async fn proxies_to_a_loopback_upstream() {
        let Some(nginx) = binary() else {
            eprintln!("SKIPPED proxies_to_a_loopback_upstream: no nginx");
            return;
        };
        let mock = crate::bench::Mock::start().await.unwrap();
        let proxy = Proxy::start(&nginx, mock.addr).await.unwrap();
        let body: serde_json::Value =
            reqwest::get(format!("{}/ok/v1/items", proxy.base)).await.unwrap().json().await.unwrap();
        assert_eq!(body["note"], "aegis bench mock");
        let dir = proxy.dir.clone();
        drop(proxy);
        assert!(!dir.exists());
        mock.stop();
    }
}
