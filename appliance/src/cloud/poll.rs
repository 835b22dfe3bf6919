//! Waiting for what AWS changes in the background (an image becoming available, a volume attaching, an
//! instance running): look, pause, look again, the pause doubling up to a cap, until a time limit, and
//! then a timeout error that says what was last seen.

use std::fmt::Display;
use std::time::{Duration, Instant};

use super::error::CloudError;

/// The longest pause between two looks.
const MAX_PAUSE: Duration = Duration::from_secs(5);

pub struct Poll {
    what: String,
    state: String,
    limit: Duration,
    deadline: Instant,
    pause: Duration,
    max: Duration,
}

impl Poll {
    /// Waiting for `what` to become `state` for at most `limit`, pausing `first`, then twice as long each
    /// time, up to 5 s.
    pub fn new(what: impl Into<String>, state: impl Into<String>, limit: Duration, first: Duration) -> Self {
        Poll {
            what: what.into(),
            state: state.into(),
            limit,
            deadline: Instant::now() + limit,
            pause: first,
            max: MAX_PAUSE.max(first),
        }
    }

    /// The same, with the same pause every time (a local file appearing, a slow service's state).
    pub fn steady(what: impl Into<String>, state: impl Into<String>, limit: Duration, pause: Duration) -> Self {
        Poll { max: pause, ..Poll::new(what, state, limit, pause) }
    }

    /// Sleeps before the next look; once the limit has passed, the timeout, with what was `last` seen.
    pub async fn pause(&mut self, last: impl Display) -> Result<(), CloudError> {
        if Instant::now() > self.deadline {
            return Err(CloudError::Timeout {
                what: self.what.clone(),
                state: self.state.clone(),
                seconds: self.limit.as_secs(),
                last: last.to_string(),
            });
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(self.max);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_after_the_limit_saying_what_it_saw() {
        let mut poll = Poll::new("volume vol-1", "available", Duration::from_millis(30), Duration::from_millis(10));
        let started = Instant::now();
        let err = loop {
            if let Err(e) = poll.pause("creating").await {
                break e;
            }
        };
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(err.to_string(), "volume vol-1 did not become available within 0 s (last seen: creating)");
    }

    #[tokio::test]
    async fn pauses_double_and_a_steady_poll_keeps_its_pause() {
        let mut poll = Poll::new("x", "y", Duration::from_secs(60), Duration::from_millis(1));
        for _ in 0..3 {
            assert!(poll.pause("").await.is_ok());
        }
        assert_eq!(poll.pause, Duration::from_millis(8));
        assert_eq!(poll.max, MAX_PAUSE);
        let mut steady = Poll::steady("x", "y", Duration::from_secs(60), Duration::from_millis(2));
        assert!(steady.pause("").await.is_ok());
        assert_eq!(steady.pause, Duration::from_millis(2));
    }
}
