//! Per-address rate limiting of login and signup (GCRA via `governor`), so password guessing and
//! signup floods are throttled before any password hashing happens.

use std::{net::IpAddr, num::NonZeroU32};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use super::ApiError;

/// Above this many tracked addresses, addresses whose allowance has fully recovered are dropped.
const RETAIN_THRESHOLD: usize = 10_000;

#[derive(Debug)]
pub struct AuthRateLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl AuthRateLimiter {
    /// Allows `per_minute` attempts per address per minute, all of them in a burst if need be.
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// Admits one attempt from `ip`, or says how long until the next one would be admitted.
    pub fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.limiter.len() > RETAIN_THRESHOLD {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| ApiError::RateLimited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_allowance() {
        let limiter = AuthRateLimiter::per_minute(NonZeroU32::new(2).unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        match limiter.check(a) {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after.as_secs() <= 30 && !retry_after.is_zero(), "{retry_after:?}")
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(limiter.check(b).is_ok());
    }
}
