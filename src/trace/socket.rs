//! Sockets: the one file that talks to the kernel, and the only user of `nix`.
//!
//! Raw mode opens, per address family, one raw ICMP socket (sends echo probes, receives
//! every ICMP reply), one send-only raw UDP socket and, on first use, one raw TCP socket
//! (sends SYNs, receives SYN-ACK / RST). For IPv4 the kernel writes the IP header; the
//! TTL and source address travel with each `sendmsg` as control messages, so one socket
//! serves every concurrent trace without a race on a socket-wide TTL option. IPv6 probes
//! of every protocol leave through one `IPPROTO_RAW` socket with a header we write, which
//! is the only way to give each flow its own flow label without leasing labels.
//!
//! Unprivileged mode uses one connected UDP socket per trace and reads ICMP errors from
//! its error queue (`IP_RECVERR`), which needs no capability.

use super::Error;
use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    self as ns, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockProtocol, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, sockopt,
};
use nix::sys::time::TimeSpec;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

/// How long a blocked receive waits before looking at the stop flag again.
pub const RECV_POLL: Duration = Duration::from_millis(200);
/// Receive buffer for the shared raw sockets: a burst of replies to 100 traces of 30
/// TTLs each must fit while the receive thread catches up.
const RCVBUF: usize = 4 << 20;

/// The transport a raw socket carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// ICMP or ICMPv6.
    Icmp,
    /// UDP (send only).
    Udp,
    /// TCP.
    Tcp,
    /// `IPPROTO_RAW` (send only): the caller writes the IP header too. IPv6 probes use it
    /// to set their own flow label, which no socket option offers without a lease.
    IpHeader,
}

/// One raw socket.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
}

/// A packet read from a socket.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// Sender address.
    pub from: IpAddr,
    /// Arrival time: the kernel's timestamp moved onto the monotonic clock.
    pub at: Instant,
    /// The TTL (IPv4) or hop limit (IPv6) the packet arrived with, when the kernel told it.
    pub ttl: Option<u8>,
}

fn op_name(v6: bool, t: Transport) -> &'static str {
    match (v6, t) {
        (false, Transport::Icmp) => "socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)",
        (false, Transport::Udp) => "socket(AF_INET, SOCK_RAW, IPPROTO_UDP)",
        (false, Transport::Tcp) => "socket(AF_INET, SOCK_RAW, IPPROTO_TCP)",
        (true, Transport::Icmp) => "socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)",
        (true, Transport::Udp) => "socket(AF_INET6, SOCK_RAW, IPPROTO_UDP)",
        (true, Transport::Tcp) => "socket(AF_INET6, SOCK_RAW, IPPROTO_TCP)",
        (false, Transport::IpHeader) => "socket(AF_INET, SOCK_RAW, IPPROTO_RAW)",
        (true, Transport::IpHeader) => "socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)",
    }
}

/// True when an error means "not allowed" rather than "broken".
pub fn is_permission(e: &Error) -> bool {
    match e {
        Error::Socket { source, .. } => {
            matches!(
                source.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES)
            )
        }
        _ => false,
    }
}

impl RawSocket {
    /// Opens a raw socket; `receive` sockets get timestamps and a big buffer.
    pub fn open(v6: bool, t: Transport, receive: bool) -> Result<RawSocket, Error> {
        let af = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let proto = match (t, v6) {
            (Transport::Icmp, false) => SockProtocol::Icmp,
            (Transport::Icmp, true) => SockProtocol::IcmpV6,
            (Transport::Udp, _) => SockProtocol::Udp,
            (Transport::Tcp, _) => SockProtocol::Tcp,
            (Transport::IpHeader, _) => SockProtocol::Raw,
        };
        let fd = ns::socket(af, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)
            .map_err(|e| Error::socket(op_name(v6, t), e))?;
        if receive {
            set_receive_options(&fd, v6)?;
        } else {
            // A raw UDP socket also gets a copy of every UDP datagram the host receives;
            // nobody reads them, so keep that queue as small as the kernel allows.
            ns::setsockopt(&fd, sockopt::RcvBuf, &0)
                .map_err(|e| Error::socket("setsockopt(SO_RCVBUF)", e))?;
        }
        Ok(RawSocket { fd })
    }

    /// Sends `buf` (transport header and payload) to `dst` with this TTL, from `src`; the
    /// kernel writes the IPv4 header.
    pub fn send(&self, buf: &[u8], dst: Ipv4Addr, ttl: u8, src: Ipv4Addr) -> Result<(), Error> {
        let iov = [IoSlice::new(buf)];
        let ttl = libc::c_int::from(ttl);
        // Pin the source the checksum was computed with (the routing choice could
        // otherwise differ for a multi-homed host).
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(src).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let cmsgs = [
            ControlMessage::Ipv4Ttl(&ttl),
            ControlMessage::Ipv4PacketInfo(&info),
        ];
        let addr = SockaddrIn::from(SocketAddrV4::new(dst, 0));
        ns::sendmsg(
            self.fd.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(drop)
        .map_err(|e| Error::socket("sendmsg", e))
    }

    /// Sends a whole IPv6 packet, header included (an [`Transport::IpHeader`] socket):
    /// hop limit, source and flow label are the ones written in it.
    pub fn send_packet(&self, packet: &[u8], dst: Ipv6Addr) -> Result<(), Error> {
        let iov = [IoSlice::new(packet)];
        let addr = SockaddrIn6::from(SocketAddrV6::new(dst, 0, 0, 0));
        ns::sendmsg(
            self.fd.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(drop)
        .map_err(|e| Error::socket("sendmsg", e))
    }

    /// True once a packet is queued; waits for one at most `wait` (rounded up to whole
    /// milliseconds), and not at all for a zero `wait`.
    pub fn readable(&self, wait: Duration) -> Result<bool, Error> {
        let ms = if wait.is_zero() {
            0
        } else {
            u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX)
        };
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => Ok(n > 0),
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(Error::socket("poll", e)),
        }
    }

    /// Takes the next queued packet without waiting; `None` when there is none.
    pub fn recv(&self, buf: &mut [u8]) -> Result<Option<Received>, Error> {
        let mut cmsg = nix::cmsg_space!(TimeSpec, libc::c_int);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match ns::recvmsg::<SockaddrStorage>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
            Err(e) => return Err(Error::socket("recvmsg", e)),
        };
        let from = msg.address.as_ref().and_then(storage_ip);
        let Some(from) = from else {
            return Ok(None);
        };
        let at = stamp(&msg);
        let ttl = arrival_ttl(&msg);
        let len = msg.bytes;
        Ok(Some(Received { len, from, at, ttl }))
    }
}

fn set_receive_options(fd: &OwnedFd, v6: bool) -> Result<(), Error> {
    ns::setsockopt(fd, sockopt::ReceiveTimestampns, &true)
        .map_err(|e| Error::socket("setsockopt(SO_TIMESTAMPNS)", e))?;
    // The TTL a reply arrives with tells how far its sender is (RIPE Atlas reports it).
    if v6 {
        ns::setsockopt(fd, sockopt::Ipv6RecvHopLimit, &true)
            .map_err(|e| Error::socket("setsockopt(IPV6_RECVHOPLIMIT)", e))?;
    } else {
        ns::setsockopt(fd, sockopt::Ipv4RecvTtl, &true)
            .map_err(|e| Error::socket("setsockopt(IP_RECVTTL)", e))?;
    }
    // The kernel caps this at net.core.rmem_max; try the privileged variant first.
    if ns::setsockopt(fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
        ns::setsockopt(fd, sockopt::RcvBuf, &RCVBUF)
            .map_err(|e| Error::socket("setsockopt(SO_RCVBUF)", e))?;
    }
    Ok(())
}

fn storage_ip(s: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(IpAddr::V4(a.ip()));
    }
    s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
}

/// The arrival time of a message on the monotonic clock.
///
/// `SO_TIMESTAMPNS` stamps on the wall clock when the packet came in, before it waited in
/// the queue and for our thread; the age of that stamp moves it onto `Instant`, so an RTT
/// excludes scheduling delay yet never mixes clocks. A stamp from the future or older than
/// a second (wall clock stepped) is not trusted.
fn stamp<S>(msg: &ns::RecvMsg<'_, '_, S>) -> Instant {
    let now = Instant::now();
    let Ok(cmsgs) = msg.cmsgs() else {
        return now;
    };
    for c in cmsgs {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let Ok(secs) = u64::try_from(ts.tv_sec()) else {
                return now;
            };
            let wall = SystemTime::UNIX_EPOCH + Duration::new(secs, ts.tv_nsec() as u32);
            return match SystemTime::now().duration_since(wall) {
                Ok(age) if age < Duration::from_secs(1) => now.checked_sub(age).unwrap_or(now),
                _ => now,
            };
        }
    }
    now
}

/// The TTL or hop limit a message arrived with, from its control messages.
fn arrival_ttl<S>(msg: &ns::RecvMsg<'_, '_, S>) -> Option<u8> {
    msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
            u8::try_from(t).ok()
        }
        _ => None,
    })
}

/// The local address the kernel would use to reach `dst` (a connected UDP socket sends
/// nothing but makes the routing decision).
pub fn source_for(dst: IpAddr) -> Result<IpAddr, Error> {
    let any: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any).map_err(|source| Error::Socket { op: "bind", source })?;
    s.connect((dst, 33434)).map_err(|source| Error::Socket {
        op: "connect",
        source,
    })?;
    let local = s.local_addr().map_err(|source| Error::Socket {
        op: "getsockname",
        source,
    })?;
    Ok(local.ip())
}

/// An ICMP error read from a UDP socket's error queue.
#[derive(Debug, Clone, Copy)]
pub struct QueuedError {
    /// The router or host that sent the ICMP error, when the kernel knows it.
    pub offender: Option<IpAddr>,
    /// ICMP (or ICMPv6) type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// The first two bytes of the probe's payload: its sequence number.
    pub seq: Option<u16>,
    /// Arrival time.
    pub at: Instant,
}

/// A connected UDP socket that reports ICMP errors through its error queue.
#[derive(Debug)]
pub struct DgramSocket {
    sock: UdpSocket,
    v6: bool,
}

impl DgramSocket {
    /// Opens a socket from `src_port` (or any port when taken) to `dst`:`dst_port`.
    pub fn open(dst: IpAddr, src_port: u16, dst_port: u16) -> Result<DgramSocket, Error> {
        let v6 = dst.is_ipv6();
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        // The fixed source port keeps the flow (and so the ECMP path) the same across runs;
        // when another socket holds it, tracing on a different flow beats not tracing.
        let sock = UdpSocket::bind((any, src_port))
            .or_else(|_| UdpSocket::bind((any, 0)))
            .map_err(|source| Error::Socket { op: "bind", source })?;
        sock.connect((dst, dst_port))
            .map_err(|source| Error::Socket {
                op: "connect",
                source,
            })?;
        if v6 {
            ns::setsockopt(&sock, sockopt::Ipv6RecvErr, &true)
                .map_err(|e| Error::socket("setsockopt(IPV6_RECVERR)", e))?;
        } else {
            ns::setsockopt(&sock, sockopt::Ipv4RecvErr, &true)
                .map_err(|e| Error::socket("setsockopt(IP_RECVERR)", e))?;
        }
        ns::setsockopt(&sock, sockopt::ReceiveTimestampns, &true)
            .map_err(|e| Error::socket("setsockopt(SO_TIMESTAMPNS)", e))?;
        Ok(DgramSocket { sock, v6 })
    }

    /// Sends `payload` with this TTL.
    pub fn send(&self, payload: &[u8], ttl: u8) -> Result<(), Error> {
        if self.v6 {
            ns::setsockopt(&self.sock, sockopt::Ipv6Ttl, &i32::from(ttl))
                .map_err(|e| Error::socket("setsockopt(IPV6_UNICAST_HOPS)", e))?;
        } else {
            ns::setsockopt(&self.sock, sockopt::Ipv4Ttl, &i32::from(ttl))
                .map_err(|e| Error::socket("setsockopt(IP_TTL)", e))?;
        }
        // An ICMP error of an earlier probe is reported once as the result of the next
        // send, which then did not go out: try again.
        for _ in 0..4 {
            match self.sock.send(payload) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error().is_some_and(is_icmp_errno) => continue,
                Err(source) => return Err(Error::Socket { op: "send", source }),
            }
        }
        Ok(())
    }

    /// Waits until `deadline` for one queued ICMP error.
    pub fn recv_error(&self, deadline: Instant) -> Result<Option<QueuedError>, Error> {
        loop {
            if let Some(e) = self.read_queue()? {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLERR)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::socket("poll", e)),
            }
            // Drain ordinary datagrams (nobody should answer, but a queue that fills
            // with them would hide nothing we need).
            let mut sink = [0u8; 64];
            while ns::recv(self.sock.as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT).is_ok() {}
        }
    }

    fn read_queue(&self) -> Result<Option<QueuedError>, Error> {
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6, TimeSpec);
        let msg = match ns::recvmsg::<SockaddrStorage>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
            Err(e) => return Err(Error::socket("recvmsg(MSG_ERRQUEUE)", e)),
        };
        let at = stamp(&msg);
        let bytes = msg.bytes;
        let mut found = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4RecvErr(e, addr) => {
                        let offender = addr
                            .map(|a| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
                        found = Some((e, offender));
                    }
                    ControlMessageOwned::Ipv6RecvErr(e, addr) => {
                        let offender =
                            addr.map(|a| IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)));
                        found = Some((e, offender));
                    }
                    _ => {}
                }
            }
        }
        let Some((e, offender)) = found else {
            return Ok(None);
        };
        // Only errors that came from an ICMP message are about our TTL or port.
        if !matches!(
            e.ee_origin,
            libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
        ) {
            return Ok(None);
        }
        let seq = (bytes >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        Ok(Some(QueuedError {
            offender,
            icmp_type: e.ee_type,
            icmp_code: e.ee_code,
            seq,
            at,
        }))
    }
}

fn is_icmp_errno(e: i32) -> bool {
    matches!(
        e,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::EPROTO
            | libc::EACCES
            | libc::EMSGSIZE
    )
}
