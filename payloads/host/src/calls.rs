//! The host's calls to the engine (`hvc #0`) and to PSCI (`smc #0`, which the
//! engine traps and relays), and how their status reads.

use core::arch::asm;
use core::fmt;

use isola_abi::Status;

/// `hvc #0` with `x0..=x4` (`x5` zero, so `Donate` moves one page);
/// returns `x0..=x3`.
pub fn hvc(fid: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> [u64; 4] {
    hvc5(fid, [a1, a2, a3, a4, 0])
}

/// `hvc #0` with `x0..=x5`; returns `x0..=x3`.
pub fn hvc5(fid: u64, a: [u64; 5]) -> [u64; 4] {
    let [a1, a2, a3, a4, a5] = a;
    let (mut r0, mut r1, mut r2, mut r3) = (fid, a1, a2, a3);
    // SAFETY: a hypercall to the engine; SMCCC lets it clobber x4..x17.
    unsafe {
        asm!("hvc #0",
            inout("x0") r0, inout("x1") r1, inout("x2") r2, inout("x3") r3,
            inout("x4") a4 => _, inout("x5") a5 => _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _, options(nostack));
    }
    [r0, r1, r2, r3]
}

/// `hvc #0` with `x0 = id`, `x1..=x6 = args`; returns `x0..=x3`.
pub fn hvc6(id: u64, args: [u64; 6]) -> [u64; 4] {
    let [a1, a2, a3, a4, a5, a6] = args;
    let (r0, r1, r2, r3);
    // SAFETY: the engine's hypercall touches no memory of this payload's
    // that Rust knows of (it may take pages away, which the payload reaches
    // only through probes); SMCCC lets it clobber x4..x17, all declared.
    unsafe {
        asm!(
            "hvc #0",
            inlateout("x0") id => r0, inlateout("x1") a1 => r1,
            inlateout("x2") a2 => r2, inlateout("x3") a3 => r3,
            inlateout("x4") a4 => _, inlateout("x5") a5 => _, inlateout("x6") a6 => _,
            lateout("x7") _, lateout("x8") _, lateout("x9") _, lateout("x10") _,
            lateout("x11") _, lateout("x12") _, lateout("x13") _, lateout("x14") _,
            lateout("x15") _, lateout("x16") _, lateout("x17") _,
            options(nostack),
        );
    }
    [r0, r1, r2, r3]
}

/// A host call with `x1..=x6`; returns `x0..=x3`.
pub fn call(c: isola_abi::HostCall, args: [u64; 6]) -> [u64; 4] {
    hvc6(c as u64, args)
}

/// A PSCI call through `smc #0`; returns `x0`.
pub fn psci(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let mut r0 = u64::from(fid);
    // SAFETY: the engine relays PSCI to firmware; the call may power CPUs on
    // or off but touches no memory of this payload. SMCCC lets it clobber
    // x1..x17, all declared.
    unsafe {
        asm!("smc #0", inout("x0") r0, inout("x1") a1 => _, inout("x2") a2 => _,
             inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
             out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
             out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
             options(nostack));
    }
    r0 as i64
}

/// Powers the machine off through the engine's PSCI relay.
pub fn power_off() -> ! {
    psci(isola_abi::psci::SYSTEM_OFF, 0, 0, 0);
    loop {
        // SAFETY: waiting for an event has no effect.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// PSCI `AFFINITY_INFO` (SMC64).
pub const AFFINITY_INFO: u32 = 0xC400_0004;
/// `AFFINITY_INFO`'s answer for a CPU that is off.
pub const AFFINITY_OFF: i64 = 1;

/// A status's name (`undefined status` if the ABI does not define it).
pub fn status_name(raw: u64) -> &'static str {
    match Status::from_raw(raw as i64) {
        Some(Status::Success) => "Success",
        Some(Status::NotSupported) => "NotSupported",
        Some(Status::InvalidArgument) => "InvalidArgument",
        Some(Status::NotOwner) => "NotOwner",
        Some(Status::AlreadyMapped) => "AlreadyMapped",
        Some(Status::Busy) => "Busy",
        Some(Status::NoMemory) => "NoMemory",
        Some(Status::NotFound) => "NotFound",
        Some(Status::NotMapped) => "NotMapped",
        Some(Status::Denied) => "Denied",
        None => "undefined status",
    }
}

/// A call's status, `Err` with the raw `x0` if the ABI does not define it.
pub fn status(x0: u64) -> Result<Status, u64> {
    Status::from_raw(x0 as i64).ok_or(x0)
}

/// A status for printing (the raw value if undefined).
pub struct St(pub u64);

impl fmt::Display for St {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match status(self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(raw) => write!(f, "undefined status {raw:#x}"),
        }
    }
}
