//! Rate windows in this process: one lock over all windows, so a call's takes are
//! checked and made together. Only the windows a call touches are pruned (never a
//! scan of every tenant's); a window is forgotten when released empty, so memory is
//! bounded by the agents and connections that have limits.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Admit, Take, WINDOW, Windows};

#[derive(Default)]
struct Window {
    /// (when, member, amount), oldest first.
    entries: VecDeque<(Instant, String, i64)>,
    total: i64,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some((at, _, amount)) = self.entries.front() {
            if now.duration_since(*at) < WINDOW {
                break;
            }
            self.total -= amount;
            self.entries.pop_front();
        }
    }

    /// When `need` more units will have freed.
    fn frees(&self, need: i64, now: Instant) -> Duration {
        let mut freed = 0;
        for (at, _, amount) in &self.entries {
            freed += amount;
            if freed >= need {
                return (*at + WINDOW).saturating_duration_since(now);
            }
        }
        WINDOW
    }
}

#[derive(Default)]
pub struct MemoryWindows {
    windows: Mutex<HashMap<String, Window>>,
}

impl MemoryWindows {
    pub fn admit_at(&self, member: &str, takes: &[Take], now: Instant) -> Admit {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for take in takes {
            let window = windows.entry(take.key.clone()).or_default();
            window.prune(now);
            if window.total + take.amount > take.limit {
                let retry_after = (take.amount <= take.limit)
                    .then(|| window.frees(window.total + take.amount - take.limit, now));
                if window.entries.is_empty() {
                    windows.remove(&take.key);
                }
                return Admit::Refused { key: take.key.clone(), limit: take.limit, retry_after };
            }
        }
        for take in takes {
            let window = windows.entry(take.key.clone()).or_default();
            window.entries.push_back((now, member.to_owned(), take.amount));
            window.total += take.amount;
        }
        Admit::Admitted
    }
}

#[async_trait::async_trait]
impl Windows for MemoryWindows {
    async fn admit(&self, member: &str, takes: &[Take]) -> Admit {
        self.admit_at(member, takes, Instant::now())
    }

    async fn adjust(&self, member: &str, key: &str, amount: i64) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = windows.get_mut(key)
            && let Some(entry) = w.entries.iter_mut().find(|(_, m, _)| m == member)
        {
            w.total += amount - entry.2;
            entry.2 = amount;
        }
    }

    async fn release(&self, member: &str, keys: &[String]) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(w) = windows.get_mut(key)
                && let Some(at) = w.entries.iter().position(|(_, m, _)| m == member)
            {
                let (_, _, amount) = w.entries.remove(at).expect("found above");
                w.total -= amount;
                if w.entries.is_empty() {
                    windows.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(key: &str, limit: i64, amount: i64) -> Take {
        Take { key: key.into(), limit, amount }
    }

    #[test]
    fn a_window_admits_exactly_its_limit_and_says_when_it_frees() {
        let w = MemoryWindows::default();
        let t0 = Instant::now();
        let admitted = (0..10)
            .filter(|i| w.admit_at(&format!("r{i}"), &[take("k", 3, 1)], t0) == Admit::Admitted)
            .count();
        assert_eq!(admitted, 3);
        match w.admit_at("late", &[take("k", 3, 1)], t0 + Duration::from_secs(20)) {
            Admit::Refused { retry_after: Some(d), .. } => assert_eq!(d, Duration::from_secs(40)),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.admit_at("later", &[take("k", 3, 1)], t0 + WINDOW), Admit::Admitted, "the window slid");
        assert!(matches!(
            w.admit_at("huge", &[take("t", 5, 6)], t0),
            Admit::Refused { retry_after: None, .. }
        ));
    }

    #[test]
    fn takes_are_all_or_nothing_and_adjust_and_release_move_the_total() {
        let w = MemoryWindows::default();
        let t0 = Instant::now();
        assert_eq!(w.admit_at("a", &[take("rpm", 10, 1), take("tpm", 100, 90)], t0), Admit::Admitted);
        assert!(matches!(
            w.admit_at("b", &[take("rpm", 10, 1), take("tpm", 100, 20)], t0),
            Admit::Refused { .. }
        ));
        assert_eq!(w.windows.lock().unwrap()["rpm"].total, 1, "the refused call took nothing");
        futures::executor::block_on(w.adjust("a", "tpm", 30));
        assert_eq!(
            w.admit_at("b", &[take("rpm", 10, 1), take("tpm", 100, 20)], t0),
            Admit::Admitted,
            "usage freed room"
        );
        futures::executor::block_on(w.release("b", &["rpm".into(), "tpm".into()]));
        {
            let windows = w.windows.lock().unwrap();
            assert_eq!((windows["rpm"].total, windows["tpm"].total), (1, 30));
        }
        futures::executor::block_on(w.release("a", &["rpm".into(), "tpm".into()]));
        assert!(w.windows.lock().unwrap().is_empty(), "windows released empty are forgotten");
    }
}
