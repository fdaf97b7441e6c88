//! Errors of the transaction layer, by fault.

use super::State;

/// Who is at fault for a [`TransactionError`] (STYLE: errors by fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The peer sent something the protocol does not allow here: log and drop it.
    Peer,
    /// The caller (transport glue or TU) fed an input it must not: a bug in the caller.
    Caller,
}

/// An input the transaction refuses. The transaction is left exactly as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// A status code outside 100–699 (RFC 3261 §7.2, §21). The caller classifies
    /// messages, so a malformed status should have been rejected by the parser.
    #[error("status code {0} is outside 100-699")]
    InvalidStatus(u16),
    /// A response the peer may not send in this state, such as a 2xx after a non-2xx
    /// final response or a different final response after the first (RFC 3261 §17.1).
    #[error("response {status} is not valid in state {state}")]
    UnexpectedResponse { state: State, status: u16 },
    /// An ACK before any final response was sent (RFC 3261 §17.2.1).
    #[error("ACK is not valid in state {state}")]
    UnexpectedAck { state: State },
    /// The TU passed a response the transaction may not send: any response after a
    /// non-2xx final (§17.2.1, §17.2.2: "MUST be discarded"), or a non-2xx after a 2xx
    /// (RFC 6026 §7.1).
    #[error("response {status} may not be sent in state {state}")]
    ResponseNotAllowed { state: State, status: u16 },
    /// Input to a terminated transaction, which must be destroyed the instant it
    /// terminates (§17.1.1.2, §17.2.1).
    #[error("the transaction is terminated")]
    Terminated,
}

impl TransactionError {
    /// Whose fault the error is.
    pub fn fault(self) -> Fault {
        match self {
            Self::UnexpectedResponse { .. } | Self::UnexpectedAck { .. } => Fault::Peer,
            Self::InvalidStatus(_) | Self::ResponseNotAllowed { .. } | Self::Terminated => {
                Fault::Caller
            }
        }
    }
}

/// The three classes of response that change a transaction's state (RFC 3261 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseClass {
    /// 100–199.
    Provisional,
    /// 200–299.
    Success,
    /// 300–699: redirection or failure.
    NonSuccess,
}

impl ResponseClass {
    pub(crate) fn of(status: u16) -> Result<Self, TransactionError> {
        match status {
            100..=199 => Ok(Self::Provisional),
            200..=299 => Ok(Self::Success),
            300..=699 => Ok(Self::NonSuccess),
            _ => Err(TransactionError::InvalidStatus(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Fault, ResponseClass, State, TransactionError};

    #[test]
    fn classes_and_bounds() {
        assert_eq!(ResponseClass::of(100), Ok(ResponseClass::Provisional));
        assert_eq!(ResponseClass::of(299), Ok(ResponseClass::Success));
        assert_eq!(ResponseClass::of(300), Ok(ResponseClass::NonSuccess));
        assert_eq!(ResponseClass::of(699), Ok(ResponseClass::NonSuccess));
        assert_eq!(
            ResponseClass::of(99),
            Err(TransactionError::InvalidStatus(99))
        );
        assert_eq!(
            ResponseClass::of(700),
            Err(TransactionError::InvalidStatus(700))
        );
    }

    #[test]
    fn faults_and_messages() {
        let e = TransactionError::UnexpectedResponse {
            state: State::Completed,
            status: 200,
        };
        assert_eq!(e.fault(), Fault::Peer);
        assert_eq!(
            e.to_string(),
            "response 200 is not valid in state Completed"
        );
        assert_eq!(TransactionError::Terminated.fault(), Fault::Caller);
    }
}
