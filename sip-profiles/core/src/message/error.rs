//! Parse errors, by fault: every variant is malformed input from the network and maps to
//! `400 Bad Request` with the variant's text as the reason phrase (RFC 3261 §21.4.1).

/// Why a message was rejected. `Display` is the reason phrase of the `400` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes are needed (stream framing); never an error for a complete datagram.
    #[error("Incomplete Message")]
    Incomplete,
    /// Larger than the configured maximum message size (answered with 413 where possible).
    #[error("Message Too Large")]
    TooLarge,
    #[error("Bad Start Line")]
    BadStartLine,
    /// Only `SIP/2.0` is spoken (RFC 3261 §7.1; RFC 4475 §3.1.2.16 `badvers`).
    #[error("Unsupported SIP Version")]
    BadVersion,
    #[error("Bad Method")]
    BadMethod,
    #[error("Bad Request-URI")]
    BadRequestUri,
    #[error("Bad Status Code")]
    BadStatusCode,
    #[error("Bad Header Line")]
    BadHeaderLine,
    #[error("Missing {0} Header")]
    MissingHeader(&'static str),
    #[error("Bad {0} Header")]
    BadHeader(&'static str),
    /// Content-Length larger than the datagram (RFC 3261 §18.3).
    #[error("Content-Length Mismatch")]
    ContentLengthMismatch,
    /// CSeq method differs from the request method (RFC 3261 §8.1.1.5; RFC 4475 `mismatch01`).
    #[error("CSeq Method Mismatch")]
    CSeqMethodMismatch,
}
