//! The management network stack: smoltcp on a queue-backed device whose
//! frames the node loop moves to and from the switch. It takes its address
//! by DHCP (or a static one from the node config) and listens on the
//! management port.

use crate::arch::x86_64::time;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// TCP port of the management service.
pub const MGMT_PORT: u16 = vmm_config::config::MGMT_PORT;
/// Sockets on the management port: the admission table's slots.
pub const MGMT_SOCKETS: usize = node_logic::admission::Limits::NODE.slots;
const MAX_QUEUE: usize = 256;

/// Frames waiting to enter or leave the stack.
#[derive(Default)]
pub struct FrameQueues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

impl Device for FrameQueues {
    type RxToken<'a> = QueueRx;
    type TxToken<'a> = QueueTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(QueueRx, QueueTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((QueueRx(frame), QueueTx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<QueueTx<'_>> {
        (self.tx.len() < MAX_QUEUE).then_some(QueueTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// A received frame handed to smoltcp.
pub struct QueueRx(Vec<u8>);

impl RxToken for QueueRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Room for one outgoing frame.
pub struct QueueTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl TxToken for QueueTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

/// How the management address is obtained.
#[derive(Clone, Copy, Debug)]
pub enum AddressMode {
    Dhcp,
    Static { address: Ipv4Cidr, gateway: Option<Ipv4Address> },
}

impl AddressMode {
    /// Static when the config names an address, else DHCP.
    pub fn from_config(uplink: &vmm_config::net::UplinkConfig) -> AddressMode {
        match uplink.address {
            Some(c) => AddressMode::Static {
                address: Ipv4Cidr::new(Ipv4Address::from(c.addr.0), c.prefix),
                gateway: uplink.gateway.map(|g| Ipv4Address::from(g.0)),
            },
            None => AddressMode::Dhcp,
        }
    }
}

/// The management interface and its sockets.
pub struct MgmtStack {
    pub queues: FrameQueues,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    leased: bool,
    listeners: Vec<SocketHandle>,
    discard: Option<Discard>,
    /// Connection requests held back (no socket listening) since last taken.
    held_back: u32,
}

/// The optional discard service: counts and drops what one client sends.
struct Discard {
    port: u16,
    socket: SocketHandle,
    bytes: u64,
    since_ms: u64,
    /// When the last transfer was logged (0: never).
    logged_ms: u64,
}

/// Connections that sent less than this are not logged.
const DISCARD_LOG_MIN: u64 = 64 * 1024;
/// At most one transfer is logged per this long, so a client looping
/// connections cannot flood the log.
const DISCARD_LOG_EVERY_MS: u64 = 10_000;

/// Whether `frame` opens a TCP connection (SYN without ACK) to `port`.
fn is_connection_request(frame: &[u8], port: u16) -> bool {
    use vswitch::frame::{parse, Ipv4Info, Network, Transport, TCP_ACK, TCP_SYN};
    matches!(
        parse(frame).map(|f| f.network),
        Ok(Network::Ipv4(Ipv4Info { transport: Transport::Tcp(t), .. }))
            if t.dst_port == port && t.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    )
}

fn now() -> Instant {
    Instant::from_millis(time::tsc_to_ms(time::rdtsc()) as i64)
}

impl MgmtStack {
    /// Creates the stack with the NIC's MAC address.
    pub fn new(mac: [u8; 6], mode: AddressMode, discard_port: Option<u16>) -> MgmtStack {
        let mut queues = FrameQueues::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // smoltcp draws DHCP transaction ids, TCP initial sequence numbers
        // and ephemeral ports from this seed: the same on every node and
        // boot without it (seen on a facility segment: one DHCP xid for all).
        let mut seed = [0u8; 8];
        if crate::arch::x86_64::rng::fill(&mut seed).is_err() {
            seed = time::rdtsc().to_le_bytes();
        }
        config.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(config, &mut queues, now());
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = match mode {
            AddressMode::Dhcp => Some(sockets.add(dhcpv4::Socket::new())),
            AddressMode::Static { address, gateway } => {
                iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::Ipv4(address));
                });
                if let Some(gw) = gateway {
                    let _ = iface.routes_mut().add_default_ipv4_route(gw);
                }
                crate::log!("net: static management address {}", address);
                None
            }
        };
        let listeners = (0..MGMT_SOCKETS)
            .map(|_| {
                // 64 KiB windows keep uploads at link speed; 32 sockets of
                // 96 KiB each are 3 MiB of heap.
                let rx = tcp::SocketBuffer::new(vec![0; 64 * 1024]);
                let tx = tcp::SocketBuffer::new(vec![0; 32 * 1024]);
                sockets.add(tcp::Socket::new(rx, tx))
            })
            .collect();
        let discard = discard_port.map(|port| {
            crate::log!("net: discard service on port {port} (throughput probe)");
            let rx = tcp::SocketBuffer::new(vec![0; 64 * 1024]);
            let tx = tcp::SocketBuffer::new(vec![0; 1024]);
            Discard { port, socket: sockets.add(tcp::Socket::new(rx, tx)), bytes: 0, since_ms: 0, logged_ms: 0 }
        });
        MgmtStack { queues, iface, sockets, dhcp, leased: false, listeners, discard, held_back: 0 }
    }

    /// Drains the discard socket; logs a connection's throughput when it ends.
    fn serve_discard(&mut self) {
        let Some(d) = self.discard.as_mut() else { return };
        let sock = self.sockets.get_mut::<tcp::Socket>(d.socket);
        if !sock.is_open() {
            let _ = sock.listen(d.port);
            d.bytes = 0;
            d.since_ms = 0;
            return;
        }
        if sock.state() == tcp::State::Established && d.since_ms == 0 {
            d.since_ms = time::tsc_to_ms(time::rdtsc()).max(1);
        }
        while let Ok(n) = sock.recv(|b| (b.len(), b.len())) {
            if n == 0 {
                break;
            }
            d.bytes += n as u64;
        }
        if sock.state() == tcp::State::CloseWait {
            sock.close();
            let now = time::tsc_to_ms(time::rdtsc());
            let ms = now.saturating_sub(d.since_ms).max(1);
            let quiet = d.logged_ms != 0 && now.saturating_sub(d.logged_ms) < DISCARD_LOG_EVERY_MS;
            if d.bytes >= DISCARD_LOG_MIN && !quiet {
                d.logged_ms = now.max(1);
                crate::log!("net: discard: {} bytes in {} ms ({} KiB/s)", d.bytes, ms, d.bytes * 1000 / 1024 / ms);
            }
        }
    }

    /// Runs the stack: DHCP progress, the management listener.
    pub fn poll(&mut self) {
        let ts = now();
        for i in 0..MGMT_SOCKETS {
            self.port(i);
        }
        self.gate_connection_requests();
        self.iface.poll(ts, &mut self.queues, &mut self.sockets);
        if let Some(h) = self.dhcp {
            match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                Some(dhcpv4::Event::Configured(cfg)) => {
                    crate::log!(
                        "net: DHCP lease {} gateway {} from {}",
                        cfg.address,
                        cfg.router.map_or_else(|| alloc::string::String::from("none"), |r| alloc::format!("{r}")),
                        cfg.server.address
                    );
                    self.leased = true;
                    let address = cfg.address;
                    let router = cfg.router;
                    self.iface.update_ip_addrs(|addrs| {
                        addrs.clear();
                        let _ = addrs.push(IpCidr::Ipv4(address));
                    });
                    if let Some(r) = router {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                }
                Some(dhcpv4::Event::Deconfigured) => {
                    if self.leased {
                        crate::log!("net: DHCP lease lost");
                    }
                    self.leased = false;
                    self.iface.update_ip_addrs(|addrs| addrs.clear());
                    self.iface.routes_mut().remove_default_ipv4_route();
                }
                None => {}
            }
        }
        for i in 0..MGMT_SOCKETS {
            self.port(i);
        }
        self.serve_discard();
        self.iface.poll(ts, &mut self.queues, &mut self.sockets);
    }

    /// Holds back connection requests to the management port beyond the
    /// sockets listening now: smoltcp would answer them with a reset, while
    /// a dropped SYN is simply sent again by the peer a moment later, when
    /// the management plane has freed a socket.
    fn gate_connection_requests(&mut self) {
        let mut free = self
            .listeners
            .iter()
            .filter(|h| self.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen)
            .count();
        let mut held = 0u32;
        self.queues.rx.retain(|frame| {
            if !is_connection_request(frame, MGMT_PORT) {
                return true;
            }
            if free == 0 {
                held += 1;
                return false;
            }
            free -= 1;
            true
        });
        self.held_back = self.held_back.saturating_add(held);
    }

    /// Connection requests held back since the last call (for the report).
    pub fn take_held_back(&mut self) -> u32 {
        core::mem::take(&mut self.held_back)
    }

    /// Socket `i` of the management port: the management plane reads and
    /// writes it each round. Re-arms the listener after a connection ends.
    pub fn port(&mut self, i: usize) -> Option<&mut tcp::Socket<'static>> {
        let handle = *self.listeners.get(i)?;
        let sock = self.sockets.get_mut::<tcp::Socket>(handle);
        if !sock.is_open() {
            let _ = sock.listen(MGMT_PORT);
        }
        Some(sock)
    }

    /// Flushes what the management plane wrote to the port.
    pub fn flush(&mut self) {
        self.iface.poll(now(), &mut self.queues, &mut self.sockets);
    }
}
