//! How a call ended, in plain words and as the CLI's exit code.

use std::fmt;

/// Exit codes of `permit-ua` (README "The user agent").
pub mod exit {
    pub const CONNECTED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REFUSED: u8 = 10;
    pub const BUSY: u8 = 11;
    pub const UNAVAILABLE: u8 = 12;
    pub const NO_ANSWER_FROM_PROXY: u8 = 13;
}

/// The result of a call attempt, from the final response or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// 2xx: the call was set up.
    Connected,
    /// 403: not on the callee's list, or no such callee (the gate says the same).
    Refused,
    /// 486 / 600: the callee is at its limit.
    Busy(u16),
    /// 480, 408 or 404, or no answer before our own ring timeout.
    Unavailable(u16),
    /// Not one response from the proxy (Timer B).
    NoResponse,
    /// We cancelled (Ctrl-C) before an answer.
    Cancelled,
    /// Any other final response.
    Failed(u16),
}

impl CallOutcome {
    /// The outcome of a final response.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Connected,
            403 => Self::Refused,
            486 | 600 => Self::Busy(status),
            404 | 408 | 480 => Self::Unavailable(status),
            487 => Self::Cancelled,
            _ => Self::Failed(status),
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Self::Connected => exit::CONNECTED,
            Self::Refused => exit::REFUSED,
            Self::Busy(_) => exit::BUSY,
            Self::Unavailable(_) => exit::UNAVAILABLE,
            Self::NoResponse => exit::NO_ANSWER_FROM_PROXY,
            Self::Cancelled | Self::Failed(_) => exit::FAILED,
        }
    }

    /// The status code, when one was received.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::Connected => Some(200),
            Self::Refused => Some(403),
            Self::Busy(s) | Self::Unavailable(s) | Self::Failed(s) => Some(s),
            Self::NoResponse | Self::Cancelled => None,
        }
    }

    /// A sentence about `callee` (a user name) for people.
    pub fn describe(self, callee: &str) -> String {
        match self {
            Self::Connected => format!("connected to {callee}"),
            Self::Refused => {
                format!("you are not on {callee}'s list, or {callee} does not exist (403)")
            }
            Self::Busy(s) => format!("{callee} is busy ({s})"),
            Self::Unavailable(404) => format!("{callee} does not exist (404)"),
            Self::Unavailable(408) => format!("{callee} did not answer in time (408)"),
            Self::Unavailable(s) => format!("{callee} is not available ({s})"),
            Self::NoResponse => "no answer from the proxy".to_string(),
            Self::Cancelled => "call cancelled".to_string(),
            Self::Failed(488) => {
                format!("{callee}'s media keys are not the ones the proxy issued (488)")
            }
            Self::Failed(s) => format!("the call failed ({s})"),
        }
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connected => "connected",
            Self::Refused => "refused",
            Self::Busy(_) => "busy",
            Self::Unavailable(_) => "unavailable",
            Self::NoResponse => "no-response",
            Self::Cancelled => "cancelled",
            Self::Failed(_) => "failed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        let cases = [
            (200, 0),
            (403, 10),
            (486, 11),
            (600, 11),
            (480, 12),
            (408, 12),
            (404, 12),
            (500, 1),
        ];
        for (status, code) in cases {
            assert_eq!(CallOutcome::of_status(status).exit_code(), code, "{status}");
        }
        assert_eq!(CallOutcome::NoResponse.exit_code(), 13);
        assert_eq!(
            CallOutcome::of_status(486).describe("bob"),
            "bob is busy (486)"
        );
        assert_eq!(
            CallOutcome::of_status(403).describe("bob"),
            "you are not on bob's list, or bob does not exist (403)"
        );
    }
}
