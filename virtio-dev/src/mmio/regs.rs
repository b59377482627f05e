//! virtio-mmio version 2 register offsets (spec 4.2.2) and status bits (spec 2.1).

/// "virt" in little-endian; read at [`MAGIC_VALUE`].
pub const MAGIC: u32 = 0x7472_6976;
/// The non-legacy virtio-mmio version.
pub const VERSION: u32 = 2;
/// Vendor ID a guest sees: "BMON" in little-endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"BMON");
/// Size of the register window the hypervisor maps per device.
pub const WINDOW_SIZE: u64 = 0x200;

/// R: magic value.
pub const MAGIC_VALUE: u64 = 0x000;
/// R: transport version.
pub const VERSION_REG: u64 = 0x004;
/// R: device type (1 = net, 2 = block).
pub const DEVICE_ID: u64 = 0x008;
/// R: vendor.
pub const VENDOR_ID_REG: u64 = 0x00c;
/// R: 32 feature bits selected by `DEVICE_FEATURES_SEL`.
pub const DEVICE_FEATURES: u64 = 0x010;
/// W: which 32-bit half of the device features to show.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// W: 32 feature bits the driver accepts, selected by `DRIVER_FEATURES_SEL`.
pub const DRIVER_FEATURES: u64 = 0x020;
/// W: which 32-bit half `DRIVER_FEATURES` writes.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// W: which queue the queue registers address.
pub const QUEUE_SEL: u64 = 0x030;
/// R: largest size of the selected queue (0: no such queue).
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// W: size of the selected queue.
pub const QUEUE_NUM: u64 = 0x038;
/// RW: the selected queue is enabled.
pub const QUEUE_READY: u64 = 0x044;
/// W: the driver has made buffers available in the queue written.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// R: pending interrupt causes.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// W: interrupt causes the driver has handled.
pub const INTERRUPT_ACK: u64 = 0x064;
/// RW: device status; writing 0 resets.
pub const STATUS: u64 = 0x070;
/// W: descriptor table address, low 32 bits.
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// W: descriptor table address, high 32 bits.
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// W: available ring address, low 32 bits.
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// W: available ring address, high 32 bits.
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// W: used ring address, low 32 bits.
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// W: used ring address, high 32 bits.
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// R: changes whenever the device configuration changes.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// RW: start of the device-specific configuration space.
pub const CONFIG: u64 = 0x100;

/// InterruptStatus bit: a queue has new used buffers.
pub const INT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit: the configuration (or DEVICE_NEEDS_RESET) changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Status: the guest has noticed the device.
pub const ACKNOWLEDGE: u32 = 1;
/// Status: the guest knows how to drive the device.
pub const DRIVER: u32 = 2;
/// Status: the driver is ready; queues may be used.
pub const DRIVER_OK: u32 = 4;
/// Status: feature negotiation is complete (refused if the features are not acceptable).
pub const FEATURES_OK: u32 = 8;
/// Status: the device hit an error and needs a reset.
pub const DEVICE_NEEDS_RESET: u32 = 0x40;
/// Status: the guest has given up on the device.
pub const FAILED: u32 = 0x80;
