//! Brute-force brake for digest authentication, per source address. Only failures
//! count (a wrong password or an unknown user): a PBX behind one NAT address that
//! authenticates correctly is never slowed, however many requests it sends. Failures
//! decay over time (a leaky bucket), so a user who mistyped a password recovers.
//! Sans-IO: time is an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limiter settings.
#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    /// Failures an address may accumulate before it is refused.
    pub burst: u32,
    /// One failure is forgiven per this interval.
    pub leak: Duration,
    /// Most addresses tracked; the least recently failed are forgotten first.
    pub capacity: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            burst: 10,
            leak: Duration::from_secs(6),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

/// Failure buckets by source IP.
#[derive(Debug)]
pub struct FailureLimiter {
    cfg: LimiterConfig,
    buckets: HashMap<IpAddr, Bucket>,
    /// Requests refused because their source was over its budget.
    pub refused: u64,
}

impl FailureLimiter {
    pub fn new(cfg: LimiterConfig) -> Self {
        Self {
            cfg,
            buckets: HashMap::new(),
            refused: 0,
        }
    }

    fn level(&self, ip: IpAddr, now: Instant) -> f64 {
        self.buckets.get(&ip).map_or(0.0, |b| {
            let leaked =
                now.saturating_duration_since(b.at).as_secs_f64() / self.cfg.leak.as_secs_f64();
            (b.level - leaked).max(0.0)
        })
    }

    /// `Some(retry_after)` when `ip` is over its failure budget: the caller answers
    /// 503 with Retry-After without looking at the credentials.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let over = self.level(ip, now) - f64::from(self.cfg.burst);
        if over < 0.0 {
            return None;
        }
        self.refused += 1;
        Some(self.cfg.leak.mul_f64(over + 1.0))
    }

    /// Records one failed authentication from `ip`; returns how many failures it holds.
    pub fn fail(&mut self, ip: IpAddr, now: Instant) -> f64 {
        if self.buckets.len() >= self.cfg.capacity && !self.buckets.contains_key(&ip) {
            self.evict(now);
        }
        let level = self.level(ip, now) + 1.0;
        self.buckets.insert(ip, Bucket { level, at: now });
        level
    }

    /// Drops empty buckets, and if still full the oldest ones.
    fn evict(&mut self, now: Instant) {
        let leak = self.cfg.leak.as_secs_f64();
        self.buckets.retain(|_, b| {
            b.level - now.saturating_duration_since(b.at).as_secs_f64() / leak > 0.0
        });
        if self.buckets.len() >= self.cfg.capacity {
            let mut ages: Vec<(Instant, IpAddr)> =
                self.buckets.iter().map(|(ip, b)| (b.at, *ip)).collect();
            ages.sort_unstable();
            for (_, ip) in ages.iter().take(self.cfg.capacity / 10 + 1) {
                self.buckets.remove(ip);
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_brake_and_decay_successes_never_count() {
        let t0 = Instant::now();
        let cfg = LimiterConfig {
            burst: 3,
            leak: Duration::from_secs(10),
            capacity: 4,
        };
        let mut l = FailureLimiter::new(cfg);
        let pbx: IpAddr = [192, 0, 2, 1].into();
        let attacker: IpAddr = [198, 51, 100, 7].into();
        for _ in 0..3 {
            assert_eq!(l.check(attacker, t0), None);
            l.fail(attacker, t0);
        }
        let retry = l.check(attacker, t0).expect("over budget");
        assert_eq!(retry, Duration::from_secs(10));
        // Another address is unaffected; a busy PBX that never fails is never refused.
        for _ in 0..10_000 {
            assert_eq!(l.check(pbx, t0), None);
        }
        // Failures leak away: after one leak interval the attacker may try once more.
        assert_eq!(l.check(attacker, t0 + Duration::from_secs(10)), None);
        assert_eq!(l.refused, 1);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(LimiterConfig {
            burst: 3,
            leak: Duration::from_secs(10),
            capacity: 100,
        });
        for i in 0..10_000u32 {
            l.fail(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.tracked() <= 100);
    }
}
