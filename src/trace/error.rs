//! The engine's typed errors: what failed, and for sockets which operation.

use std::fmt;
use std::io;

/// Why a trace, a tracer or a name lookup failed.
#[derive(Debug)]
pub enum Error {
    /// A socket operation failed; `op` names it (e.g. `sendmsg`, `socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)`).
    Socket {
        /// The operation, as a reader of `strace` would write it.
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// Raw sockets are refused (no root / CAP_NET_RAW) and the unprivileged fallback
    /// could not be opened either.
    NotPermitted {
        /// Why the fallback failed (the raw socket failed with EPERM).
        source: io::Error,
    },
    /// The current mode cannot send this kind of probe (e.g. TCP without raw sockets).
    Unsupported(String),
    /// A host name did not resolve to a usable address.
    Resolve {
        /// The name looked up.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The trace options are unusable; the message names the field and the value.
    InvalidOptions(String),
    /// The tracer's receive thread has stopped, so no reply can arrive.
    Stopped,
}

impl Error {
    /// A failed socket operation, from a `nix` error.
    pub(crate) fn socket(op: &'static str, e: nix::Error) -> Error {
        Error::Socket {
            op,
            source: io::Error::from_raw_os_error(e as i32),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Socket { op, .. } => write!(f, "socket operation {op} failed"),
            Error::NotPermitted { .. } => f.write_str(
                "raw sockets need root or CAP_NET_RAW, and unprivileged UDP probing failed too",
            ),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::Resolve { host, reason } => write!(f, "cannot resolve {host:?}: {reason}"),
            Error::InvalidOptions(what) => write!(f, "invalid trace options: {what}"),
            Error::Stopped => f.write_str("the tracer's receive thread has stopped"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Socket { source, .. } | Error::NotPermitted { source } => Some(source),
            _ => None,
        }
    }
}
