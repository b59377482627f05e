//! Networking for the test guests: finds a virtio-mmio virtio-net device,
//! drives it with `virtio-drivers` and runs `smoltcp` on top of it.
//!
//! Device windows are the ones of QEMU's `microvm` machine, which BMonitor
//! copies: [`MMIO_SLOTS`] windows of [`MMIO_SLOT_SIZE`] bytes from
//! [`MMIO_BASE`]; a slot without a device reads DeviceID 0. No interrupts:
//! everything is polled (the used rings are plain memory, so polling costs
//! no VM exits; only `QueueNotify` writes do, and `virtio-drivers` skips
//! those the device suppresses through EVENT_IDX).
//!
//! Memory: queues and packet buffers come from the heap ([`crate::heap`],
//! which [`NetDevice::open`] initializes); the identity map makes every
//! pointer its own guest-physical address, which is what [`GuestHal`] gives
//! the device.
//!
//! One descriptor per packet: the 12-byte `virtio_net_hdr` (VERSION_1) and
//! the frame share a buffer of [`BUF_LEN`] bytes; [`QUEUE_SIZE`] receive
//! buffers are posted at start and reposted after each packet, and up to
//! [`QUEUE_SIZE`] transmissions are in flight without waiting.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::{clock, cpu, heap};

/// Guest-physical address of the first virtio-mmio window.
pub const MMIO_BASE: u64 = 0xFEB0_0000;
/// Size of (and stride between) the windows.
pub const MMIO_SLOT_SIZE: u64 = 0x200;
/// Number of windows scanned.
pub const MMIO_SLOTS: usize = 32;
/// `MagicValue` of a virtio-mmio window ("virt").
pub const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// Virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Entries of each virtqueue (the device's QueueNumMax must be at least this).
pub const QUEUE_SIZE: usize = 64;
/// Bytes of each packet buffer: header plus the largest frame, rounded up.
pub const BUF_LEN: usize = 2048;
/// Largest Ethernet frame (without FCS) handed to or taken from smoltcp.
pub const MAX_FRAME: usize = 1514;

/// What a virtio-mmio window reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Window number (0..[`MMIO_SLOTS`]).
    pub index: usize,
    /// Its guest-physical base address.
    pub base: u64,
    /// `Version` (1 = legacy, 2 = virtio 1.x).
    pub version: u32,
    /// `DeviceID` (0 = empty slot).
    pub device_id: u32,
}

fn read_reg(base: u64, offset: u64) -> u32 {
    let addr = (base + offset) as *const u32;
    // SAFETY: `base` is one of the virtio-mmio windows below 4 GiB, which
    // the boot identity map covers; `offset` is an aligned register of the
    // window's header, whose reads have no side effects. The window is
    // device memory, never a Rust object.
    unsafe { core::ptr::read_volatile(addr) }
}

/// Reads the header of window `index` (`None` if beyond [`MMIO_SLOTS`] or
/// no virtio magic there).
pub fn probe(index: usize) -> Option<Slot> {
    if index >= MMIO_SLOTS {
        return None;
    }
    let base = MMIO_BASE + index as u64 * MMIO_SLOT_SIZE;
    if read_reg(base, 0x000) != VIRTIO_MAGIC {
        return None;
    }
    Some(Slot { index, base, version: read_reg(base, 0x004), device_id: read_reg(base, 0x008) })
}

/// All windows that carry the virtio magic, populated or not.
pub fn scan() -> impl Iterator<Item = Slot> {
    (0..MMIO_SLOTS).filter_map(probe)
}

/// `virtio-drivers`' view of this guest's memory: DMA memory from the
/// heap, and physical = virtual everywhere (identity map).
pub struct GuestHal;

// SAFETY: `dma_alloc` returns fresh, zeroed, page-aligned heap memory (or 0
// on failure), owned by the caller until `dma_dealloc`; addresses are
// identity-mapped, so the physical address handed to the device is the
// pointer itself.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(layout) =
            pages.checked_mul(PAGE_SIZE).filter(|&n| n > 0).and_then(|n| Layout::from_size_align(n, PAGE_SIZE).ok())
        else {
            return (0, NonNull::dangling());
        };
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        match NonNull::new(ptr) {
            Some(p) => (ptr as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Ok(layout) = Layout::from_size_align(pages.saturating_mul(PAGE_SIZE), PAGE_SIZE) else {
            return -1;
        };
        // SAFETY: the caller passes back a region `dma_alloc` returned for
        // the same number of pages, i.e. allocated with this layout.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // Identity map (only the PCI transport calls this).
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        // Identity map, no IOMMU, no bounce buffers.
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Why [`NetDevice::open`] failed.
#[derive(Debug)]
pub enum NetError {
    /// No window holds a virtio-net device.
    NoDevice,
    /// The window's header was rejected by `virtio-drivers`.
    Transport(virtio_drivers::transport::mmio::MmioError),
    /// Device initialisation or queue setup failed.
    Virtio(virtio_drivers::Error),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoDevice => write!(f, "no virtio-net device in the {} virtio-mmio slots", MMIO_SLOTS),
            NetError::Transport(e) => write!(f, "virtio-mmio transport: {}", e),
            NetError::Virtio(e) => write!(f, "virtio-net init: {}", e),
        }
    }
}

/// Frame counters of a [`NetDevice`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames handed to the device for transmission.
    pub tx_frames: u64,
    /// Frames dropped on transmit (no free buffer, queue error, too long).
    pub tx_dropped: u64,
    /// Receive completions that were malformed (shorter than the header).
    pub rx_errors: u64,
}

type Raw = VirtIONetRaw<GuestHal, MmioTransport<'static>, QUEUE_SIZE>;

/// The transmit side (and the raw driver, which both sides use).
struct TxSide {
    raw: Raw,
    /// Buffers not in flight.
    free: Vec<Box<[u8]>>,
    /// In-flight buffers by token, with the length handed to the device.
    busy: Vec<Option<(Box<[u8]>, usize)>>,
    stats: Stats,
}

impl TxSide {
    /// Takes back every buffer the device has finished with.
    fn reclaim(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((buf, len)) = self.busy.get_mut(usize::from(token)).and_then(Option::take) else {
                // A token we never issued: the device is broken; stop.
                return;
            };
            let part = buf.get(..len).unwrap_or(&buf[..]);
            // SAFETY: `part` is exactly the slice passed to
            // `transmit_begin` for `token`.
            let _ = unsafe { self.raw.transmit_complete(token, part) };
            self.free.push(buf);
        }
    }

    /// Whether a frame could be queued now.
    fn ready(&mut self) -> bool {
        self.reclaim();
        !self.free.is_empty() && self.raw.can_send()
    }

    /// Builds a frame of `len` bytes with `fill` and queues it (or drops it
    /// when no buffer is free; `fill` runs either way).
    fn send_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.reclaim();
        let Some(mut buf) = self.free.pop() else {
            self.stats.tx_dropped += 1;
            return fill(&mut vec![0u8; len]);
        };
        let hdr = self.raw.fill_buffer_header(&mut buf).unwrap_or(0);
        let Some(frame) = buf.get_mut(hdr..hdr + len).filter(|_| hdr > 0 && len <= MAX_FRAME) else {
            self.free.push(buf);
            self.stats.tx_dropped += 1;
            return fill(&mut vec![0u8; len]);
        };
        let r = fill(frame);
        let total = hdr + len;
        let part = buf.get(..total).unwrap_or(&buf[..]);
        // SAFETY: the buffer is kept in `busy` (never touched) until
        // `reclaim` passes the same slice to `transmit_complete`.
        match unsafe { self.raw.transmit_begin(part) } {
            Ok(token) => match self.busy.get_mut(usize::from(token)) {
                Some(slot @ None) => {
                    *slot = Some((buf, total));
                    self.stats.tx_frames += 1;
                }
                // Cannot happen with a sane queue; leak the buffer rather
                // than reuse memory the device may still read.
                _ => {
                    core::mem::forget(buf);
                    self.stats.tx_dropped += 1;
                }
            },
            Err(_) => {
                self.free.push(buf);
                self.stats.tx_dropped += 1;
            }
        }
        r
    }
}

/// A virtio-net device brought up and polled; also a smoltcp
/// [`phy::Device`].
pub struct NetDevice {
    tx: TxSide,
    slot: Slot,
    /// Posted receive buffers by token.
    rx_posted: Vec<Option<Box<[u8]>>>,
    /// The packet last handed out (buffer, frame start, frame length); it
    /// is reposted on the next receive or transmit.
    rx_current: Option<(Box<[u8]>, usize, usize)>,
    /// Buffers that could not be posted (queue error); retried later.
    rx_spare: Vec<Box<[u8]>>,
    mac: [u8; 6],
}

impl NetDevice {
    /// Finds the first virtio-net window, initialises the heap and the
    /// device (features negotiated by `virtio-drivers`: VERSION_1, MAC,
    /// STATUS, RING_EVENT_IDX and RING_INDIRECT_DESC when offered) and posts
    /// the receive buffers.
    pub fn open() -> Result<Self, NetError> {
        heap::init();
        let slot = scan().find(|s| s.device_id == DEVICE_ID_NET).ok_or(NetError::NoDevice)?;
        let header = NonNull::new(slot.base as *mut VirtIOHeader).ok_or(NetError::NoDevice)?;
        // SAFETY: `header` is a virtio-mmio window (checked magic) of
        // `MMIO_SLOT_SIZE` bytes, identity-mapped, device memory that no
        // Rust object overlaps; only this transport uses it for the rest of
        // the program (a guest opens its NIC once).
        let transport = unsafe { MmioTransport::new(header, MMIO_SLOT_SIZE as usize) }.map_err(NetError::Transport)?;
        let raw = Raw::new(transport).map_err(NetError::Virtio)?;
        let mac = raw.mac_address();
        let mut dev = NetDevice {
            tx: TxSide {
                raw,
                free: (0..QUEUE_SIZE).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
                busy: (0..QUEUE_SIZE).map(|_| None).collect(),
                stats: Stats::default(),
            },
            slot,
            rx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            rx_current: None,
            rx_spare: Vec::new(),
            mac,
        };
        for _ in 0..QUEUE_SIZE {
            let buf = vec![0u8; BUF_LEN].into_boxed_slice();
            if let Err(e) = dev.post_rx(buf) {
                return Err(NetError::Virtio(e));
            }
        }
        Ok(dev)
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The window the device was found in.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// Frame counters.
    pub fn stats(&self) -> Stats {
        self.tx.stats
    }

    fn post_rx(&mut self, mut buf: Box<[u8]>) -> Result<(), virtio_drivers::Error> {
        // SAFETY: the buffer is kept in `rx_posted` (never touched) until
        // `pop_rx` passes it to `receive_complete` for the same token.
        match unsafe { self.tx.raw.receive_begin(&mut buf) } {
            Ok(token) => match self.rx_posted.get_mut(usize::from(token)) {
                Some(slot @ None) => {
                    *slot = Some(buf);
                    Ok(())
                }
                _ => {
                    // Cannot happen with a sane queue; the device may write
                    // this buffer, so never reuse it.
                    core::mem::forget(buf);
                    Err(virtio_drivers::Error::WrongToken)
                }
            },
            Err(e) => {
                self.rx_spare.push(buf);
                Err(e)
            }
        }
    }

    /// Reposts the buffer of the last packet handed out (and any spare).
    fn recycle(&mut self) {
        if let Some((buf, _, _)) = self.rx_current.take() {
            let _ = self.post_rx(buf);
        }
        while let Some(buf) = self.rx_spare.pop() {
            if self.post_rx(buf).is_err() {
                break;
            }
        }
    }

    /// Takes the next received frame into `rx_current`; false if none.
    fn pop_rx(&mut self) -> bool {
        self.recycle();
        while let Some(token) = self.tx.raw.poll_receive() {
            let Some(mut buf) = self.rx_posted.get_mut(usize::from(token)).and_then(Option::take) else {
                return false;
            };
            // SAFETY: `buf` is the buffer posted with `token`.
            match unsafe { self.tx.raw.receive_complete(token, &mut buf) } {
                Ok((hdr, len)) if hdr + len <= buf.len() && len <= MAX_FRAME + 4 => {
                    self.tx.stats.rx_frames += 1;
                    self.rx_current = Some((buf, hdr, len.min(MAX_FRAME)));
                    return true;
                }
                _ => {
                    self.tx.stats.rx_errors += 1;
                    let _ = self.post_rx(buf);
                }
            }
        }
        false
    }

    /// Calls `f` with the next received frame, if any.
    pub fn recv_frame<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if !self.pop_rx() {
            return None;
        }
        let (buf, start, len) = self.rx_current.as_ref()?;
        buf.get(*start..start + len).map(f)
    }

    /// Queues `frame` (a whole Ethernet frame without FCS) for
    /// transmission. False if it was dropped (no free buffer or too long).
    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        self.recycle();
        let before = self.tx.stats.tx_frames;
        self.tx.send_with(frame.len(), |buf| buf.copy_from_slice(frame));
        self.tx.stats.tx_frames > before
    }
}

/// smoltcp receive token: the frame in [`NetDevice`]'s current buffer.
pub struct RxToken<'a>(&'a [u8]);

/// smoltcp transmit token.
pub struct TxToken<'a>(&'a mut TxSide);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.0.send_with(len, f)
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.pop_rx() {
            return None;
        }
        let (buf, start, len) = self.rx_current.as_ref()?;
        let frame = buf.get(*start..start + len)?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        self.recycle();
        if self.tx.ready() {
            Some(TxToken(&mut self.tx))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

/// smoltcp's clock: [`clock::now_ns`] in microseconds.
pub fn now() -> Instant {
    Instant::from_micros(i64::try_from(clock::now_ns() / 1000).unwrap_or(i64::MAX))
}

/// A device, an interface with one IPv4 address and a socket set.
pub struct Stack {
    /// The NIC.
    pub device: NetDevice,
    /// smoltcp's interface.
    pub iface: Interface,
    /// The sockets the guest added.
    pub sockets: SocketSet<'static>,
}

impl Stack {
    /// Opens the NIC and configures `addr` (and a default route through
    /// `gateway`, if given).
    pub fn open(addr: Ipv4Cidr, gateway: Option<Ipv4Address>) -> Result<Self, NetError> {
        let mut device = NetDevice::open()?;
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(device.mac())));
        let [m0, m1, m2, m3, m4, m5] = device.mac();
        config.random_seed = cpu::rdtsc() ^ u64::from_le_bytes([m0, m1, m2, m3, m4, m5, 0x5a, 0xa5]);
        let mut iface = Interface::new(config, &mut device, now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv4(addr));
        });
        if let Some(gw) = gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Ok(Stack { device, iface, sockets: SocketSet::new(Vec::new()) })
    }

    /// One round of smoltcp processing; true if a socket may have changed.
    pub fn poll(&mut self) -> bool {
        self.iface.poll(now(), &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged
    }

    /// Polls; if nothing happened, gives the CPU away once ([`clock::idle`]).
    /// Returns whether something happened.
    pub fn poll_or_idle(&mut self) -> bool {
        let busy = self.poll();
        if !busy {
            clock::idle();
        }
        busy
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub struct MacDisplay(pub [u8; 6]);

impl fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", a, b, c, d, e, g)
    }
}
