//! The front door: what a socket goes through before it is a session, and the text
//! of clients that reaches the log.
//!
//! - **Pending logins.** A socket that has not logged in yet holds a slot of its own,
//!   bounded pool ([`FrontDoor::admit`]): at most `max_pending_logins` at once, at most
//!   `max_pending_logins_per_ip` from one address. Only an authenticated session takes
//!   one of the `max_client_connections` slots ([`FrontDoor::client_slot`]), so
//!   sockets that never answer the greeting cannot lock logged-in users out; they only
//!   compete with each other, and for `login_timeout` at most.
//! - **Login throttle.** After `login_throttle_failures` failed logins from one address,
//!   or for one user name, later attempts wait before their answer, doubling from
//!   `login_throttle_delay` up to `login_throttle_max_delay` ([`LoginThrottle`]).
//! - **Per-user sessions.** A user with `max_connections` holds one [`UserSlot`] per
//!   session; a login beyond the limit is refused with 1226 ([`FrontDoor::user_slot`]).
//! - **Client buffer budget.** What client read buffers hold beyond a small baseline
//!   comes from one [`BufferBudget`] ([`FrontDoor::read_limits`]); see
//!   [`crate::protocol::packet`].
//! - **Log escaping.** [`LogSafe`] writes client-supplied text with its control
//!   characters escaped, so a user name cannot forge log lines or colour a terminal.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{LimitsConfig, CLIENT_BUFFER_BASELINE};
use crate::error::ProxyError;
use crate::protocol::packet::{BufferBudget, ReadLimits};

/// Most addresses, and most user names, the login throttle remembers at once; beyond
/// that, new ones are not tracked until old records expire (memory stays bounded
/// whatever an attacker sends).
const MAX_TRACKED: usize = 100_000;

/// The proxy's admission state, shared by the listener and every session.
pub struct FrontDoor {
    pending: Arc<Semaphore>,
    max_pending: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
    clients: Arc<Semaphore>,
    max_clients: usize,
    /// How long a socket may take from accept to a logged-in session.
    pub login_timeout: Duration,
    /// Failed-login bookkeeping.
    pub throttle: LoginThrottle,
    /// Sessions open now, by user (only users with `max_connections`).
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    /// What client read buffers may hold beyond their baselines.
    pub buffers: Arc<BufferBudget>,
    packet_stall_timeout: Option<Duration>,
}

/// A session's place in its user's `max_connections`, given back when dropped.
#[derive(Debug)]
pub struct UserSlot {
    user: String,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.per_user);
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// A socket's slot in the pending-login pool, given back when dropped (at the end of
/// the login, whatever its outcome).
#[derive(Debug)]
pub struct PendingLogin {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        let mut m = lock(&self.per_ip);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl FrontDoor {
    /// The front door of a proxy serving at most `max_clients` sessions.
    pub fn new(l: &LimitsConfig, max_clients: usize) -> FrontDoor {
        FrontDoor {
            pending: Arc::new(Semaphore::new(l.max_pending_logins)),
            max_pending: l.max_pending_logins,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip: l.max_pending_logins_per_ip,
            clients: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            login_timeout: l.login_timeout,
            throttle: LoginThrottle::new(ThrottleConfig {
                failures: l.login_throttle_failures,
                window: l.login_throttle_window,
                delay: l.login_throttle_delay,
                max_delay: l.login_throttle_max_delay,
            }),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            buffers: Arc::new(BufferBudget::new(l.client_buffer_budget)),
            packet_stall_timeout: l.packet_stall_timeout,
        }
    }

    /// The read bounds of a new client connection.
    pub fn read_limits(&self) -> ReadLimits {
        ReadLimits::new(
            self.buffers.clone(),
            CLIENT_BUFFER_BASELINE,
            self.packet_stall_timeout,
        )
    }

    /// A session slot of `user`, whose limit is `limit` (None: no limit, nothing
    /// counted), or the 1226 error the login is refused with.
    pub fn user_slot(
        &self,
        user: &str,
        limit: Option<usize>,
    ) -> Result<Option<UserSlot>, ProxyError> {
        let Some(limit) = limit else { return Ok(None) };
        let mut m = lock(&self.per_user);
        let n = m.get(user).copied().unwrap_or(0);
        if n >= limit {
            return Err(ProxyError::user_connections_exceeded(user, limit));
        }
        m.insert(user.to_string(), n + 1);
        Ok(Some(UserSlot {
            user: user.to_string(),
            per_user: self.per_user.clone(),
        }))
    }

    /// Sessions of `user` counted against its `max_connections` now.
    pub fn user_sessions(&self, user: &str) -> usize {
        lock(&self.per_user).get(user).copied().unwrap_or(0)
    }

    /// A pending-login slot for a socket from `ip`, or the error it is refused with
    /// (1040) when the pool, or this address's share of it, is full.
    pub fn admit(&self, ip: IpAddr) -> Result<PendingLogin, ProxyError> {
        let mut m = lock(&self.per_ip);
        let n = m.get(&ip).copied().unwrap_or(0);
        if n >= self.max_per_ip {
            return Err(ProxyError::too_many_pending_logins(true));
        }
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            return Err(ProxyError::too_many_pending_logins(false));
        };
        m.insert(ip, n + 1);
        Ok(PendingLogin {
            _permit: permit,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }

    /// A client slot for an authenticated session, held while it lives; None when
    /// `max_client_connections` sessions are open.
    pub fn client_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.clients.clone().try_acquire_owned().ok()
    }

    /// Sockets holding a pending-login slot now.
    pub fn pending_logins(&self) -> usize {
        self.max_pending - self.pending.available_permits()
    }

    /// Authenticated sessions open now.
    pub fn sessions(&self) -> usize {
        self.max_clients - self.clients.available_permits()
    }

    /// How long a login attempt from `ip` for `user`, begun at `started`, waits before
    /// its answer: the throttle's delay, kept short enough that the answer still comes
    /// before the login deadline (a throttled attempt never holds its pending slot
    /// past `login_timeout`).
    pub fn login_delay(&self, ip: IpAddr, user: &str, started: Instant) -> Duration {
        let delay = self.throttle.delay(ip, user, Instant::now());
        let left = (started + self.login_timeout)
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(250));
        delay.min(left)
    }
}

/// When failed logins start to cost time, and how much.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures tolerated before attempts are delayed (0: never delayed).
    pub failures: u32,
    /// A record is forgotten once this long has passed without a failure.
    pub window: Duration,
    /// The first delay; it doubles with each further failure.
    pub delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

/// Failures of one address or one user name.
#[derive(Debug, Clone)]
struct Record {
    failures: u32,
    last_failure: Instant,
    /// When throttling of this key was last logged, and the failures counted then.
    logged: Option<(Instant, u32)>,
}

/// Failed logins by address and by user name, and the delays they earn.
///
/// A record counts failures until `window` has passed without one, so a steady attack
/// stays throttled however slowly it goes; a successful login clears the records of its
/// address and its user.
pub struct LoginThrottle {
    config: ThrottleConfig,
    by_ip: Mutex<HashMap<IpAddr, Record>>,
    by_user: Mutex<HashMap<String, Record>>,
}

/// Something the throttle has to say in the log (once per window and key).
#[derive(Debug, PartialEq, Eq)]
pub enum ThrottleNotice {
    /// Logins from this address are delayed.
    Address(IpAddr, u32),
    /// Logins for this user name are delayed.
    User(String, u32),
}

impl LoginThrottle {
    /// A throttle with no failures recorded.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            by_ip: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
        }
    }

    /// The delay an attempt from `ip` for `user` earns at `now`: the longer of the two.
    pub fn delay(&self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let by_ip = lock(&self.by_ip).get(&ip).map(|r| self.delay_of(r, now));
        let by_user = lock(&self.by_user).get(user).map(|r| self.delay_of(r, now));
        by_ip.unwrap_or_default().max(by_user.unwrap_or_default())
    }

    fn delay_of(&self, r: &Record, now: Instant) -> Duration {
        let c = &self.config;
        if c.failures == 0 || r.failures < c.failures || self.expired(r, now) {
            return Duration::ZERO;
        }
        // The (failures + 1)th attempt waits `delay`, each further one twice as long.
        let doublings = (r.failures - c.failures).min(30);
        c.delay
            .checked_mul(1u32 << doublings)
            .unwrap_or(c.max_delay)
            .min(c.max_delay)
    }

    fn expired(&self, r: &Record, now: Instant) -> bool {
        now.saturating_duration_since(r.last_failure) >= self.config.window
    }

    /// Counts a failed login from `ip` for `user` at `now`; returns what the log should
    /// say (once per window for each address or user name being throttled).
    pub fn record_failure(&self, ip: IpAddr, user: &str, now: Instant) -> Vec<ThrottleNotice> {
        let mut notices = Vec::new();
        if self.config.failures == 0 {
            return notices;
        }
        if let Some(n) = self.count(&self.by_ip, ip, now) {
            notices.push(ThrottleNotice::Address(ip, n));
        }
        if let Some(n) = self.count(&self.by_user, user.to_string(), now) {
            notices.push(ThrottleNotice::User(user.to_string(), n));
        }
        notices
    }

    /// Counts one failure under `key`; Some(failures) when that is to be logged.
    fn count<K: Hash + Eq>(
        &self,
        map: &Mutex<HashMap<K, Record>>,
        key: K,
        now: Instant,
    ) -> Option<u32> {
        let mut m = lock(map);
        if m.len() >= MAX_TRACKED && !m.contains_key(&key) {
            m.retain(|_, r| !self.expired(r, now));
            if m.len() >= MAX_TRACKED {
                return None;
            }
        }
        let r = m.entry(key).or_insert(Record {
            failures: 0,
            last_failure: now,
            logged: None,
        });
        if self.expired(r, now) {
            *r = Record {
                failures: 0,
                last_failure: now,
                logged: None,
            };
        }
        r.failures = r.failures.saturating_add(1);
        r.last_failure = now;
        if r.failures < self.config.failures {
            return None;
        }
        let due = match r.logged {
            None => true,
            Some((at, _)) => now.saturating_duration_since(at) >= self.config.window,
        };
        if due {
            r.logged = Some((now, r.failures));
            Some(r.failures)
        } else {
            None
        }
    }

    /// A successful login from `ip` as `user`: both records start over.
    pub fn record_success(&self, ip: IpAddr, user: &str) {
        lock(&self.by_ip).remove(&ip);
        lock(&self.by_user).remove(user);
    }
}

/// Writes notices to the log (client-supplied names escaped).
pub fn log_notices(notices: Vec<ThrottleNotice>) {
    for n in notices {
        match n {
            ThrottleNotice::Address(ip, failures) => tracing::warn!(
                %ip, failures,
                "login failures from this address: further attempts are delayed"
            ),
            ThrottleNotice::User(user, failures) => tracing::warn!(
                user = %LogSafe(&user), failures,
                "login failures for this user: further attempts are delayed"
            ),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Displays a value with control characters escaped (`\n`, `\r`, `\t`, `\\`, and
/// `\u{1b}` style for the others, ANSI escapes included), so text a client chose
/// (a user or database name, a message that quotes one) stays one plain log line.
pub struct LogSafe<T>(pub T);

impl<T: fmt::Display> fmt::Display for LogSafe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        write!(Escaper(f), "{}", self.0)
    }
}

/// Escapes what goes through it on its way to the formatter.
struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if c.is_control() || c == '\\' {
                self.0.write_str(&s[plain..i])?;
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    '\\' => self.0.write_str("\\\\")?,
                    c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                }
                plain = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[plain..])
    }
}

/// Sleeps for `d`, or forever when None (a disabled limit in a `select!`).
pub async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => crate::timer::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            failures: 5,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn log_safe_escapes_newlines_and_ansi_escapes() {
        let s = LogSafe("app\n2026-01-01 INFO forged\x1b[31mred\\").to_string();
        assert_eq!(s, "app\\n2026-01-01 INFO forged\\u{1b}[31mred\\\\");
        assert_eq!(LogSafe("plain ünïcode").to_string(), "plain ünïcode");
        assert_eq!(
            LogSafe("\r\t\x00\u{7f}\u{85}").to_string(),
            "\\r\\t\\u{0}\\u{7f}\\u{85}"
        );
        // Display values that write in pieces are escaped too.
        let e = ProxyError::unknown_database("x\ny");
        assert!(!LogSafe(&e).to_string().contains('\n'));
    }

    #[test]
    fn five_failures_are_free_then_delays_double_up_to_the_cap() {
        let t = throttle();
        let now = Instant::now();
        let mut delays = Vec::new();
        for i in 0..12 {
            delays.push(t.delay(A, "app", now).as_millis());
            t.record_failure(A, &format!("user{i}"), now);
        }
        assert_eq!(
            delays,
            [0, 0, 0, 0, 0, 100, 200, 400, 800, 1600, 3200, 5000]
        );
        // Another address, another user: not delayed.
        assert_eq!(t.delay(B, "other", now), Duration::ZERO);
    }

    #[test]
    fn a_user_is_throttled_from_every_address() {
        let t = throttle();
        let now = Instant::now();
        for i in 0..6u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i));
            t.record_failure(ip, "app", now);
        }
        assert_eq!(t.delay(B, "app", now), Duration::from_millis(200));
        assert_eq!(t.delay(B, "admin", now), Duration::ZERO);
    }

    #[test]
    fn the_record_is_forgotten_after_a_quiet_window_or_a_success() {
        let t = throttle();
        let now = Instant::now();
        for _ in 0..8 {
            t.record_failure(A, "app", now);
        }
        assert!(t.delay(A, "x", now + Duration::from_secs(59)) > Duration::ZERO);
        assert_eq!(
            t.delay(A, "x", now + Duration::from_secs(60)),
            Duration::ZERO
        );
        // A failure after the quiet window starts a fresh count.
        t.record_failure(A, "app", now + Duration::from_secs(61));
        assert_eq!(
            t.delay(A, "app", now + Duration::from_secs(61)),
            Duration::ZERO
        );
        for _ in 0..8 {
            t.record_failure(A, "app", now);
        }
        t.record_success(A, "app");
        assert_eq!(t.delay(A, "app", now), Duration::ZERO);
    }

    #[test]
    fn throttling_is_logged_once_per_window() {
        let t = throttle();
        let now = Instant::now();
        let mut logged = Vec::new();
        for s in 0..130u64 {
            // One failure a second: the record never expires.
            let at = now + Duration::from_secs(s);
            for n in t.record_failure(A, "app", at) {
                logged.push((s, n));
            }
        }
        let addr: Vec<u64> = logged
            .iter()
            .filter(|(_, n)| matches!(n, ThrottleNotice::Address(..)))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(addr, [4, 64, 124]);
        assert_eq!(logged.len(), 6, "{logged:?}");
    }

    #[test]
    fn no_throttling_when_disabled() {
        let t = LoginThrottle::new(ThrottleConfig {
            failures: 0,
            ..throttle().config
        });
        let now = Instant::now();
        for _ in 0..50 {
            assert!(t.record_failure(A, "app", now).is_empty());
        }
        assert_eq!(t.delay(A, "app", now), Duration::ZERO);
    }

    #[test]
    fn pending_logins_are_capped_per_address_and_in_total() {
        let limits = LimitsConfig {
            max_pending_logins: 3,
            max_pending_logins_per_ip: 2,
            ..LimitsConfig::default()
        };
        let door = FrontDoor::new(&limits, 10);
        let a1 = door.admit(A).expect("first from A");
        let _a2 = door.admit(A).expect("second from A");
        let e = door.admit(A).expect_err("third from A refused");
        assert_eq!((e.code, &e.sqlstate), (1040, b"08004"));
        assert!(e.message.contains("from this address"), "{e}");
        let _b1 = door.admit(B).expect("B has its own share");
        let e = door.admit(B).expect_err("pool full");
        assert_eq!(e.message, "Too many connections (pending logins)");
        assert_eq!(door.pending_logins(), 3);
        drop(a1);
        let _b2 = door.admit(B).expect("a slot came back");
        assert_eq!(door.sessions(), 0);
    }

    #[test]
    fn user_slots_are_capped_and_given_back() {
        let door = FrontDoor::new(&LimitsConfig::default(), 10);
        assert!(door.user_slot("free", None).expect("no limit").is_none());
        let a = door.user_slot("app", Some(2)).expect("first");
        let _b = door.user_slot("app", Some(2)).expect("second");
        let e = door.user_slot("app", Some(2)).expect_err("third refused");
        assert_eq!((e.code, &e.sqlstate), (1226, b"42000"));
        assert_eq!(
            e.message,
            "User 'app' has exceeded the 'max_user_connections' resource (current value: 2)"
        );
        let _other = door.user_slot("admin", Some(2)).expect("another user");
        assert_eq!(door.user_sessions("app"), 2);
        drop(a);
        assert_eq!(door.user_sessions("app"), 1);
        let _c = door.user_slot("app", Some(2)).expect("a slot came back");
    }
}
