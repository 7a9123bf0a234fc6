//! The contract between isola's test guest and the host that runs it.
//!
//! The guest image (`src/main.rs`, binary `isola-guest`) is one program whose
//! behaviour the host picks with the `x0` it passes at `VcpuCreate`: the low
//! byte is a [`Behaviour`], the rest a parameter. The guest talks back only
//! through `GuestCall::HostCall` with a [`msg`] tag in the first word, through
//! the emulated console (see [`layout`]) and through PSCI.
//!
//! Everything here is plain data and pure functions, so the host payload
//! depends on it and it is tested on the build machine.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// Guest memory layout (IPAs), the image's load address, the console.
pub mod layout {
    include!("layout.rs");
}

pub mod regs;

/// `"ISOLAGST"`, little-endian: the image header's magic.
pub const IMAGE_MAGIC: u64 = u64::from_le_bytes(*b"ISOLAGST");

/// The image header, at [`layout::IPA_BASE`] (and at
/// [`layout::IMAGE_LOAD_PA`] before the host copies it): four little-endian
/// words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// IPA where the bytes the host copies end (code, read-only data, data).
    pub image_end: u64,
    /// IPA where the memory the guest needs mapped ends: the image, its
    /// zero-initialised data and one stack per vCPU. Page aligned.
    pub mem_end: u64,
}

impl ImageHeader {
    /// Decodes the header from its first four words (a branch over the
    /// header and a zero word, [`IMAGE_MAGIC`], `image_end`, `mem_end`),
    /// checking the magic and that the image fits its load window and ends
    /// below the data region.
    pub fn parse(words: [u64; 4]) -> Option<Self> {
        let [w0, magic, image_end, mem_end] = words;
        let image_bytes = image_end.checked_sub(layout::IPA_BASE)?;
        let fits = image_bytes <= layout::IMAGE_MAX_BYTES
            && image_end <= mem_end
            && mem_end % isola_abi::PAGE_SIZE == 0
            && mem_end <= layout::DATA_IPA;
        (magic == IMAGE_MAGIC && w0 >> 32 == 0 && fits).then_some(Self { image_end, mem_end })
    }

    /// Bytes of the image the host copies from [`layout::IMAGE_LOAD_PA`].
    pub const fn image_bytes(&self) -> u64 {
        self.image_end.wrapping_sub(layout::IPA_BASE)
    }

    /// Pages the host must donate from [`layout::IPA_BASE`].
    pub const fn pages(&self) -> u64 {
        self.mem_end.wrapping_sub(layout::IPA_BASE) / isola_abi::PAGE_SIZE
    }
}

/// What a vCPU does, chosen by the low byte of its initial `x0`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Hash the data region and report it ([`msg::CHECKSUM`]); the host's
    /// reply says whether to do it again (non-zero) or stop.
    Checksum = 1,
    /// Write a greeting to the console and read the counter three times;
    /// report [`msg::COUNTER`] with the last value and whether it increased.
    Mmio = 2,
    /// Share this vCPU's page at [`layout::SHARE_IPA`], answer the host's
    /// message in it, unshare it.
    Share = 3,
    /// Touch this vCPU's page in the demand window, check it reads back,
    /// relinquish it.
    Demand = 4,
    /// The hypercall attacks and a bounded random storm of guest calls.
    Attack = 5,
    /// Read the `u64` at the IPA in the parameter and report it
    /// ([`msg::PROBE`]); a write of [`PROBE_WRITE_VALUE`] first if bit 0 of
    /// the parameter is set.
    Probe = 6,
    /// PSCI `SYSTEM_OFF` at once.
    SystemOff = 7,
    /// PSCI `SYSTEM_RESET` at once, through `smc` (the others use `hvc`).
    SystemReset = 8,
    /// Share this vCPU's share page, write [`SPINNING`] into word 0 and spin
    /// without exiting until the host writes [`STOP`] into word 1; then
    /// unshare and report [`msg::SPUN`]. Keeps the vCPU loaded on one CPU for
    /// as long as the host needs (to attack a running vCPU).
    Spin = 9,
    /// Check that the fresh vCPU's EL1 registers (TPIDRs, CONTEXTIDR, MAIR,
    /// AMAIR, TCR, TTBRs) are zero, not the host's; fill them, `x4..x30`,
    /// `v0..v31` and FPCR with patterns, make a guest call the engine answers
    /// itself (`Info`) and one that exits to the host (`HostCall` with
    /// [`msg::REGS`]); after each, count the registers that lost their value;
    /// report [`msg::REGS_RESULT`].
    Registers = 10,
    /// Never give the CPU back: spin with every interrupt masked (parameter
    /// bit 0 clear), or loop in its own exception vectors, a page of zeroes
    /// (undefined instructions) it points `VBAR_EL1` at (bit 0 set). Only
    /// the engine's bound on a run (the host's own timer deadline) ends its
    /// turn.
    Hold = 11,
    /// Virtual interrupts: enable the virtual CPU interface and report
    /// [`msg::VIRQ_READY`] (the host may put an interrupt in a list
    /// register for its reply); unmask interrupts; send itself SGI
    /// [`VIRQ_SGI`]; then, the parameter's number of times, arm its virtual
    /// timer a millisecond ahead and wait (`WFI`) until its handler has
    /// taken the timer's interrupt, which the host injects. The handler
    /// acknowledges every virtual interrupt, disarms the timer on PPI 27 and
    /// ends it (`EOI`), counting in `TPIDRRO_EL0`. Reports
    /// [`msg::VIRQ_RESULT`].
    VirtualIrq = 12,
    /// The register census (docs/guests.md): probe every system-register
    /// encoding a lower EL can name, `MRS` and `MSR`, at EL1 or (parameter
    /// [`census::EL0`]) EL0, and report what each does; see [`census`].
    Census = 13,
    /// Hash the data region the parameter's number of times at EL0 (with
    /// interrupts unmasked there), then report the hash
    /// ([`msg::EL0_RESULT`]) from EL1.
    El0 = 14,
}

/// The register census: the encoding space, the passes a census vCPU
/// makes, and how it reports (`GuestCall::HostCall` messages) — the plain
/// half, shared by the guest that probes and the host that judges.
///
/// An encoding is `op0` (2 or 3), `op1`, `CRn`, `CRm`, `op2`: 15 bits,
/// [`enc`]. A *planting* vCPU (VM A) reads every encoding (its fresh
/// values), writes the complement of every value to every one (and reads
/// it back at once: what stuck), leaves what it wrote in place, reads
/// everything (what it leaves), exits to the host once, and reads
/// everything again (what survived its own exit). A *reading* vCPU (VM B,
/// run next on the same CPU) reads every encoding once. After each block
/// of eight encodings of a planting pass the guest asks the host how many
/// of its accesses trapped to EL2 ([`msg::CENSUS_BLOCK`]); if the host
/// cannot tell which, the guest probes them again one at a time
/// ([`msg::CENSUS_ONE`]). Every probe that did not fault is reported with
/// its value ([`msg::CENSUS_VALUE`]).
pub mod census {
    /// Parameter bit: probe at EL0 (else EL1).
    pub const EL0: u64 = 1;
    /// Parameter bit: plant (VM A); else read only (VM B).
    pub const PLANT: u64 = 2;

    /// Encodings: 2 `op0` x 8 `op1` x 16 `CRn` x 16 `CRm` x 8 `op2`.
    pub const ENCODINGS: u32 = 1 << 15;

    /// The 15-bit index of an encoding (`op0` 2 or 3).
    pub const fn enc(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
        (op0 & 1) << 14 | (op1 & 7) << 11 | (crn & 15) << 7 | (crm & 15) << 3 | (op2 & 7)
    }

    /// `(op0, op1, CRn, CRm, op2)` of an index.
    pub const fn fields(e: u32) -> (u32, u32, u32, u32, u32) {
        (
            2 | (e >> 14 & 1),
            e >> 11 & 7,
            e >> 7 & 15,
            e >> 3 & 15,
            e & 7,
        )
    }

    /// `MRS x<rt>, <encoding>`.
    pub const fn mrs(e: u32, rt: u32) -> u32 {
        0xd530_0000 | (e << 5) | (rt & 31)
    }

    /// `MSR <encoding>, x<rt>`.
    pub const fn msr(e: u32, rt: u32) -> u32 {
        0xd510_0000 | (e << 5) | (rt & 31)
    }

    /// The assembler's name for an encoding: `s<op0>_<op1>_c<n>_c<m>_<op2>`.
    pub fn name(e: u32) -> impl core::fmt::Display {
        struct N(u32);
        impl core::fmt::Display for N {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let (a, b, c, d, g) = fields(self.0);
                write!(f, "s{a}_{b}_c{c}_c{d}_{g}")
            }
        }
        N(e)
    }

    /// A pass's direction, in bits 23..26 of a report.
    pub mod dir {
        /// `MRS` of a fresh vCPU (a planting one before it writes).
        pub const READ: u32 = 0;
        /// `MSR` of the complement of the register's value (of its pattern
        /// if it cannot be read; of its working value if the census runs on
        /// it), then `MRS` at once.
        pub const WRITE: u32 = 1;
        /// `MRS` after the planting vCPU's exit to the host.
        pub const AGAIN: u32 = 2;
        /// `MRS` right before that exit: what the planting vCPU leaves.
        pub const LAST: u32 = 3;
        /// What the vCPU found at its entry in a register its entry code or
        /// the census sets before the first pass.
        pub const ENTRY: u32 = 4;
    }

    /// Fault bits of a probe (a report's bits 26..30): which of the probe's
    /// instructions took an exception at EL1 (undefined there, or injected
    /// by the engine): the `MRS` of a read; the `MSR` (bit 0) and the `MRS`
    /// after it (bit 1) of a write.
    pub const FAULT_SHIFT: u32 = 26;

    /// A report's tag word: the message, the encoding, the direction, the
    /// fault bits.
    pub const fn report(message: u64, e: u32, dir: u32, faults: u32) -> u64 {
        message | (e as u64) << 8 | (dir as u64 & 7) << 23 | (faults as u64 & 15) << FAULT_SHIFT
    }

    /// `(encoding, direction, faults)` of a report's tag.
    pub const fn parse(tag: u64) -> (u32, u32, u32) {
        (
            (tag >> 8) as u32 & 0x7fff,
            (tag >> 23) as u32 & 7,
            (tag >> FAULT_SHIFT) as u32 & 15,
        )
    }

    /// The exception registers, which the census's own skipped faults
    /// overwrite: each pass reads them before any probe faults, and the
    /// planting pass writes them after every other, so what the census
    /// reports of them is what the vCPU had, not what its own probes left.
    pub const EXCEPTION_REGISTERS: [u32; 4] = [
        enc(3, 0, 4, 0, 0),
        enc(3, 0, 4, 0, 1),
        enc(3, 0, 5, 2, 0),
        enc(3, 0, 6, 0, 0),
    ];

    /// The host's answer to [`super::msg::CENSUS_BLOCK`] asking the guest
    /// to probe the block again one encoding at a time.
    pub const RESOLVE: u64 = 1;

    /// The pattern a planting vCPU writes to encoding `e`: its bits are
    /// unlike a reset value's and unlike any other encoding's.
    pub const fn pattern(e: u32) -> u64 {
        crate::splitmix64(0xa5a5_0000_0000_0000 ^ e as u64)
    }
}

/// The SGI a [`Behaviour::VirtualIrq`] vCPU sends itself.
pub const VIRQ_SGI: u64 = 3;
/// The SPI the host injects at [`msg::VIRQ_READY`].
pub const VIRQ_SPI: u64 = 40;

/// The value the register test puts in `x<n>` (guest side: `owner` 0x5ee0;
/// host side: 0x4057).
pub const fn reg_pattern(owner: u64, n: u64) -> u64 {
    owner << 48 | 0x100 | (n & 0xff)
}

/// The byte the register test repeats through `v<n>` (guest: `base` 0x40;
/// host: 0x80).
pub const fn vreg_byte(base: u8, n: u8) -> u8 {
    base.wrapping_add(n)
}

/// The FPCR the guest's register test sets (FZ | DN).
pub const REGS_FPCR: u64 = 3 << 24;

/// Word 0 of a [`Behaviour::Spin`] vCPU's shared page while it spins.
pub const SPINNING: u64 = 0x5350_494e_4e49_4e47;
/// What the host writes into word 1 to end the spin.
pub const STOP: u64 = 0x5354_4f50;

impl Behaviour {
    /// Decodes the low byte of `x0`.
    pub const fn from_x0(x0: u64) -> Option<Self> {
        Some(match x0 & 0xff {
            1 => Self::Checksum,
            2 => Self::Mmio,
            3 => Self::Share,
            4 => Self::Demand,
            5 => Self::Attack,
            6 => Self::Probe,
            7 => Self::SystemOff,
            8 => Self::SystemReset,
            9 => Self::Spin,
            10 => Self::Registers,
            11 => Self::Hold,
            12 => Self::VirtualIrq,
            13 => Self::Census,
            14 => Self::El0,
            _ => return None,
        })
    }

    /// The `x0` that selects this behaviour with `param` (56 bits; higher bits
    /// are dropped).
    pub const fn x0(self, param: u64) -> u64 {
        (self as u64) | (param << 8)
    }

    /// The parameter part of `x0`.
    pub const fn param(x0: u64) -> u64 {
        x0 >> 8
    }
}

/// Value a [`Behaviour::Probe`] writes before it reads back.
pub const PROBE_WRITE_VALUE: u64 = 0x1501_a000_0000_0bad;

/// Tags in the first word of a guest's `HostCall`; the second is the payload.
pub mod msg {
    /// `[CHECKSUM, hash]`: reply non-zero to hash again, zero to stop.
    pub const CHECKSUM: u64 = 0x10;
    /// `[COUNTER, last << 1 | increasing]` after three counter reads.
    pub const COUNTER: u64 = 0x11;
    /// `[SHARED, status]` after `GuestCall::Share` of the vCPU's share page:
    /// the host may now write its message into word 0 of that page.
    pub const SHARED: u64 = 0x12;
    /// `[ANSWERED, message]`: the guest read `message` from word 0 and wrote
    /// [`answer`](crate::answer)`(message)` into word 1.
    pub const ANSWERED: u64 = 0x13;
    /// `[UNSHARED, status]` after `GuestCall::Unshare`.
    pub const UNSHARED: u64 = 0x14;
    /// `[DEMAND, ok]` after writing and reading back the demand page.
    pub const DEMAND: u64 = 0x15;
    /// `[RELINQUISHED, status]` after `GuestCall::Relinquish` of it.
    pub const RELINQUISHED: u64 = 0x16;
    /// `[ATTACK, id << 32 | status as u32]`: one attack's outcome; `id` is an
    /// [`Attack`](crate::Attack).
    pub const ATTACK: u64 = 0x17;
    /// `[STORM, defined << 32 | calls]`: the random storm made `calls` guest
    /// calls and every one that returned a defined status counted in `defined`.
    pub const STORM: u64 = 0x18;
    /// `[PROBE, value]`: what [`Behaviour::Probe`] read.
    pub const PROBE: u64 = 0x19;
    /// `[INFO, index << 32 | count]`: the vCPU's index and its VM's vCPU
    /// count, from `GuestCall::Info`, once at start.
    pub const INFO: u64 = 0x1a;
    /// `[SPUN, status of the unshare]`: a spin ended.
    pub const SPUN: u64 = 0x1b;
    /// `[REGS, 0]`: the register test's exit to the host (reply 0).
    pub const REGS: u64 = 0x1c;
    /// `[REGS_RESULT, leaked << 48 | lost after Info << 32 | lost after the
    /// exit]`: `leaked` counts inspected EL1 registers that were not zero in
    /// the fresh vCPU (they would be the host's), `lost` registers that did
    /// not keep the test's value.
    pub const REGS_RESULT: u64 = 0x1d;
    /// `[VIRQ_READY, 0]`: the virtual CPU interface is on; interrupts get
    /// unmasked after the reply.
    pub const VIRQ_READY: u64 = 0x1e;
    /// `[VIRQ_RESULT, timer ticks << 32 | interrupts taken]`.
    pub const VIRQ_RESULT: u64 = 0x20;
    /// `[CENSUS_BLOCK | block << 8 | dir << 23 | faulted << 32, 0]`: a block
    /// of eight encodings of a planting pass is probed (`faults`: one bit
    /// per encoding whose probe faulted); the host replies
    /// [`census::RESOLVE`](crate::census::RESOLVE) to have them probed one
    /// at a time.
    pub const CENSUS_BLOCK: u64 = 0x21;
    /// `[CENSUS_ONE | encoding << 8 | dir << 23 | faults << 26, 0]`: one
    /// encoding probed (again) alone.
    pub const CENSUS_ONE: u64 = 0x22;
    /// `[CENSUS_VALUE | encoding << 8 | dir << 23 | faults << 26, value]`:
    /// a probe that did not fault altogether, and the value it read.
    pub const CENSUS_VALUE: u64 = 0x23;
    /// `[CENSUS_EXIT, 0]`: the planting vCPU's exit between its writes and
    /// its second reading.
    pub const CENSUS_EXIT: u64 = 0x24;
    /// `[CENSUS_DONE, probes]`: the census vCPU is done.
    pub const CENSUS_DONE: u64 = 0x25;
    /// `[EL0_RESULT, hash]`: what the EL0 worker (`Behaviour::El0`) hashed.
    pub const EL0_RESULT: u64 = 0x26;
    /// `[FATAL, esr]`: an exception the guest did not expect; it turns off.
    pub const FATAL: u64 = 0x1f;
}

/// The guest's hypercall attacks, reported as [`msg::ATTACK`] in this order.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// A guest-call id the ABI does not define.
    UndefinedId = 1,
    /// A host-only call (`HostCall::Donate`) made by a guest.
    HostOnlyCall = 2,
    /// `GuestCall::Share` of an IPA the guest has not got.
    ShareUnmapped = 3,
    /// `GuestCall::Share` of an address that is not page aligned.
    ShareUnaligned = 4,
    /// `GuestCall::Share` of an IPA beyond any IPA space.
    ShareWild = 5,
    /// `GuestCall::Share` of a page the host lent the guest: not its own.
    ShareBorrowed = 6,
    /// `GuestCall::Unshare` of an owned page that is not shared.
    UnshareNotShared = 7,
    /// `GuestCall::Relinquish` of an IPA the guest has not got.
    RelinquishUnmapped = 8,
    /// `GuestCall::Relinquish` of the borrowed page.
    RelinquishBorrowed = 9,
    /// An SMC with an id nobody defines (SMC is trapped for guests).
    SmcUndefined = 10,
}

impl Attack {
    /// Every attack, in the order the guest makes them.
    pub const ALL: [Attack; 10] = [
        Attack::UndefinedId,
        Attack::HostOnlyCall,
        Attack::ShareUnmapped,
        Attack::ShareUnaligned,
        Attack::ShareWild,
        Attack::ShareBorrowed,
        Attack::UnshareNotShared,
        Attack::RelinquishUnmapped,
        Attack::RelinquishBorrowed,
        Attack::SmcUndefined,
    ];

    /// The attack for a reported id.
    pub fn from_id(id: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|a| *a as u64 == id)
    }

    /// Its name in the host's `attack <name>: ...` line.
    pub const fn name(self) -> &'static str {
        match self {
            Attack::UndefinedId => "guest-undefined-call-id",
            Attack::HostOnlyCall => "guest-makes-host-call",
            Attack::ShareUnmapped => "guest-share-unmapped",
            Attack::ShareUnaligned => "guest-share-unaligned",
            Attack::ShareWild => "guest-share-wild-ipa",
            Attack::ShareBorrowed => "guest-share-borrowed-page",
            Attack::UnshareNotShared => "guest-unshare-not-shared",
            Attack::RelinquishUnmapped => "guest-relinquish-unmapped",
            Attack::RelinquishBorrowed => "guest-relinquish-borrowed-page",
            Attack::SmcUndefined => "guest-smc-undefined-id",
        }
    }
}

/// Calls in the guest's random storm.
pub const STORM_CALLS: u32 = 64;

/// The word the host fills the data region with: `pattern(seed, i)` is word
/// `i` (little-endian `u64`s from [`layout::DATA_IPA`]).
pub const fn pattern(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// SplitMix64's output function: a cheap, well-mixed 64-bit hash.
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over 64-bit words: the checksum the guest reports and the host
/// recomputes over the same words.
#[derive(Clone, Copy, Debug)]
pub struct Checksum(u64);

impl Checksum {
    /// The empty checksum.
    pub const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Folds in one word.
    pub const fn word(self, w: u64) -> Self {
        Self((self.0 ^ w).wrapping_mul(0x0000_0100_0000_01b3))
    }

    /// The value.
    pub const fn value(self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// The checksum of a data region filled with `pattern(seed, _)`.
pub fn expected_checksum(seed: u64) -> u64 {
    let words = layout::DATA_PAGES.saturating_mul(isola_abi::PAGE_SIZE / 8);
    (0..words)
        .fold(Checksum::new(), |c, i| c.word(pattern(seed, i)))
        .value()
}

/// The guest's answer to the host's message in a shared page.
pub const fn answer(message: u64) -> u64 {
    !message.rotate_left(13)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_round_trips_through_x0() {
        for b in [
            Behaviour::Checksum,
            Behaviour::Mmio,
            Behaviour::Share,
            Behaviour::Demand,
            Behaviour::Attack,
            Behaviour::Probe,
            Behaviour::SystemOff,
            Behaviour::SystemReset,
            Behaviour::Spin,
            Behaviour::Registers,
            Behaviour::Hold,
            Behaviour::VirtualIrq,
            Behaviour::Census,
            Behaviour::El0,
        ] {
            let x0 = b.x0(0x4000_1001);
            assert_eq!(Behaviour::from_x0(x0), Some(b));
            assert_eq!(Behaviour::param(x0), 0x4000_1001);
        }
        assert_eq!(Behaviour::from_x0(0), None);
        assert_eq!(Behaviour::from_x0(0x1_00), None);
    }

    #[test]
    fn header_checks_magic_and_sizes() {
        let base = layout::IPA_BASE;
        let h = ImageHeader::parse([0x1400_0008, IMAGE_MAGIC, base + 0x1234, base + 0x2_0000]);
        let h = h.unwrap();
        assert_eq!((h.pages(), h.image_bytes()), (32, 0x1234));
        assert_eq!(
            ImageHeader::parse([0x1400_0008, 0, base + 0x1234, base + 0x2_0000]),
            None
        );
        assert_eq!(
            ImageHeader::parse([0x1400_0008, IMAGE_MAGIC, base + 0x3000, base + 0x2000]),
            None
        );
        assert_eq!(
            ImageHeader::parse([0x1400_0008, IMAGE_MAGIC, base + 0x10, base + 0x2001]),
            None
        );
        assert_eq!(
            ImageHeader::parse([0x1400_0008, IMAGE_MAGIC, base - 8, base + 0x2000]),
            None
        );
        // The image and its stacks must end below the data region.
        assert_eq!(
            ImageHeader::parse([
                0x1400_0008,
                IMAGE_MAGIC,
                base + 0x10,
                layout::DATA_IPA + 0x1000
            ]),
            None
        );
    }

    // The windows must not overlap: checked at compile time.
    const _: () = {
        let page = isola_abi::PAGE_SIZE;
        let data_end = layout::DATA_IPA + layout::DATA_PAGES * page;
        assert!(data_end <= layout::SHARE_IPA);
        assert!(layout::SHARE_IPA + layout::MAX_VCPUS * page <= layout::BORROW_IPA);
        assert!(layout::BORROW_IPA + page <= layout::DEMAND_IPA);
        assert!(layout::DEMAND_IPA + layout::MAX_VCPUS * page <= layout::DEMAND_LIMIT);
        assert!(layout::DEMAND_LIMIT <= layout::CONSOLE_IPA);
    };

    #[test]
    fn checksum_depends_on_every_word_and_the_seed() {
        assert_ne!(expected_checksum(1), expected_checksum(2));
        let a = Checksum::new().word(1).word(2).value();
        let b = Checksum::new().word(2).word(1).value();
        assert_ne!(a, b);
        assert_ne!(answer(5), 5);
    }

    #[test]
    fn a_probe_record_is_judged_register_by_register() {
        for p in [regs::GUEST, regs::HOST] {
            let mut record = [0u64; regs::WORDS];
            for n in 4..=30 {
                record[n] = reg_pattern(p.owner, n as u64);
            }
            record[31] = p.fpsr << 32 | p.fpcr;
            for n in 0..32u8 {
                let v = u64::from_ne_bytes([vreg_byte(p.vbase, n); 8]);
                record[32 + 2 * usize::from(n)] = v;
                record[33 + 2 * usize::from(n)] = v;
            }
            assert_eq!(p.lost(&record), 0);
            // x0..x3 carry results: never judged.
            record[0..4].copy_from_slice(&[1, 2, 3, 4]);
            assert_eq!(p.lost(&record), 0);
            record[19] ^= 1;
            record[95] = 0;
            record[31] = p.fpcr;
            assert_eq!(p.lost(&record), 3);
        }
        assert_ne!(regs::GUEST, regs::HOST);
    }

    #[test]
    fn attack_ids_are_distinct_and_named() {
        for (i, a) in Attack::ALL.iter().enumerate() {
            assert_eq!(Attack::from_id(*a as u64), Some(*a));
            for b in &Attack::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(Attack::from_id(0), None);
    }
}
