//! The register census (`isola.test=census`, docs/guests.md): on one CPU,
//! VM A plants a pattern in every register its vCPU can write (at EL1, and
//! at EL0), VM B then reads every one as a fresh vCPU; the host reads its
//! own registers before and after. Every system-register encoding a lower
//! EL can name is tried (the guest builds each `MRS`/`MSR` from the
//! encoding formula, `payloads/guest/src/census.rs`), and the engine's
//! per-CPU counters say which accesses trapped to EL2.
//!
//! Verdicts: a register VM B reads with VM A's value is a leak; a host
//! register that reads differently after the guests ran (and did not
//! change between two readings before) is a leak; either prints `FAIL`.
//! Every encoding that anybody can reach gets one `census:` line with what
//! each side saw, which `cargo xtask census` turns into the census table of
//! docs/guests.md.
//!
//! Invariant: the census runs on the boot CPU alone, with interrupts
//! masked and no tick: the per-CPU trap counters it reads between two
//! reports count only the census vCPU's accesses.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use isola_abi::{Accounting, Exit, HostCall, PAGE_SIZE, Status, counter, perms};
use isola_guest_payload::census::{self, dir};
use isola_guest_payload::{Behaviour, ImageHeader, layout, msg};

use crate::calls::{St, call};
use crate::console::{fail, say};

/// Host RAM the census donates from (the VM test uses `0x8000_0000..`).
const POOL_BASE: u64 = 0xb000_0000;
const POOL_END: u64 = 0xb400_0000;
/// Pool pages of a census VM.
const VM_POOL: u64 = 16;

const N: usize = census::ENCODINGS as usize;

/// What one side (a view: EL1 or EL0) saw of every encoding.
struct View {
    flags: [u16; N],
    /// VM A's first reading (a fresh vCPU).
    a_read: [u64; N],
    /// What VM A read back right after writing.
    a_back: [u64; N],
    /// VM A's reading after its own exit to the host.
    a_again: [u64; N],
    /// VM A's reading right before that exit: what it leaves.
    a_last: [u64; N],
    /// VM B's reading (a fresh vCPU, run after A on this CPU).
    b_read: [u64; N],
}

/// `View::flags` bits.
mod flag {
    /// VM A's read did not fault.
    pub const A_READ: u16 = 1 << 0;
    /// VM A's read trapped to EL2.
    pub const READ_TRAP: u16 = 1 << 1;
    /// VM A's write did not fault.
    pub const A_WRITE: u16 = 1 << 2;
    /// VM A's read-back after the write did not fault.
    pub const A_BACK: u16 = 1 << 3;
    /// How many of VM A's write probe's instructions trapped (0..=3, the
    /// two bits from here).
    pub const WRITE_TRAPS_SHIFT: u16 = 4;
    /// VM A's second reading did not fault.
    pub const A_AGAIN: u16 = 1 << 6;
    /// VM B's reading did not fault.
    pub const B_READ: u16 = 1 << 7;
    /// VM A's reading before its exit did not fault.
    pub const A_LAST: u16 = 1 << 8;
    /// VM A's fresh value is the one it found at its entry (`a_read` holds
    /// it: its entry code sets the register before the census reads).
    pub const A_ENTRY: u16 = 1 << 9;
    /// The same for VM B (`b_read`).
    pub const B_ENTRY: u16 = 1 << 10;
}

/// The host's own readings: two before the guests, one after.
struct HostView {
    ok: [bool; N],
    before: [[u64; N]; 2],
    after: [u64; N],
    after_ok: [bool; N],
}

struct Records {
    views: [View; 2],
    host: HostView,
}

struct RecordsCell(UnsafeCell<Records>);
// SAFETY: only the boot CPU runs the census, alone (module invariant).
unsafe impl Sync for RecordsCell {}

static RECORDS: RecordsCell = RecordsCell(UnsafeCell::new(Records {
    views: [const {
        View {
            flags: [0; N],
            a_read: [0; N],
            a_back: [0; N],
            a_again: [0; N],
            a_last: [0; N],
            b_read: [0; N],
        }
    }; 2],
    host: HostView {
        ok: [false; N],
        before: [[0; N]; 2],
        after: [0; N],
        after_ok: [false; N],
    },
}));

fn records() -> &'static mut Records {
    // SAFETY: one CPU, one caller at a time (module invariant); the
    // reference does not outlive the census.
    unsafe { &mut *RECORDS.0.get() }
}

/// The host's code page for its own readings (4 KiB, executable: the
/// host's map gives RAM no execute-never bit).
#[repr(C, align(4096))]
struct CodePage([u32; 1024]);
struct CodeCell(UnsafeCell<CodePage>);
// SAFETY: as `RecordsCell`.
unsafe impl Sync for CodeCell {}
static CODE: CodeCell = CodeCell(UnsafeCell::new(CodePage([0; 1024])));

/// Reads encoding `e` at the host's EL1 behind the census vectors:
/// `Some(value)`, or `None` if the `MRS` faulted.
fn host_read(e: u32) -> Option<u64> {
    let page = CODE.0.get() as u64;
    for (i, w) in [census::mrs(e, 0), 0xd65f_03c0].into_iter().enumerate() {
        // SAFETY: the host's own code page, used by this CPU alone.
        unsafe { (CODE.0.get() as *mut u32).add(i).write_volatile(w) };
    }
    let (value, faults): (u64, u64);
    // SAFETY: cache maintenance makes the new instructions what the CPU
    // fetches; the branch runs them (`mrs x0; ret`); a fault is skipped by
    // the census vectors (installed by `main`), which note it in x4.
    unsafe {
        asm!(
            "dc cvau, x5",
            "dsb ish",
            "ic ivau, x5",
            "dsb ish",
            "isb",
            "mov x4, xzr",
            "blr x5",
            out("x0") value,
            out("x3") _,
            out("x4") faults,
            in("x5") page,
            out("x6") _,
            out("x30") _,
            options(nostack),
        );
    }
    (faults == 0).then_some(value)
}

/// Reads every encoding into `out`; `ok[e]` whether it read.
fn host_read_all(out: &mut [u64; N], ok: &mut [bool; N]) {
    for (e, (v, k)) in (0u32..).zip(out.iter_mut().zip(ok.iter_mut())) {
        let r = host_read(e);
        *k = r.is_some();
        *v = r.unwrap_or(0);
    }
}

// The host's census vectors: a synchronous exception at EL1 whose ELR is
// the code page's first word (x5) is a probe's fault (bit in x4, skipped);
// anything else is unexpected and fatal.
global_asm!(
    r#"
    .section .text.host_census_vectors, "ax"
    .balign 2048
host_census_vectors:
    .set hc_vector, 0
    .rept 16
    .balign 0x80
    .if hc_vector == 4
    b host_census_sync
    .else
    b host_census_fatal
    .endif
    .set hc_vector, hc_vector + 1
    .endr
host_census_sync:
    mrs x6, elr_el1
    sub x6, x6, x5
    cmp x6, #8
    b.hs host_census_fatal
    lsr x6, x6, #2
    mov x3, #1
    lsl x3, x3, x6
    orr x4, x4, x3
    mrs x6, elr_el1
    add x6, x6, #4
    msr elr_el1, x6
    eret
host_census_fatal:
    mrs x0, esr_el1
    mrs x1, elr_el1
    bl host_census_unexpected
1:  wfe
    b 1b
"#
);

#[unsafe(no_mangle)]
extern "C" fn host_census_unexpected(esr: u64, elr: u64) {
    crate::console::emergency_line(format_args!(
        "census: FAIL unexpected exception at EL1 (ESR {esr:#x}, ELR {elr:#x})"
    ));
    crate::calls::power_off();
}

/// Installs the census vectors; returns the host's.
fn install_vectors() -> u64 {
    let saved: u64;
    // SAFETY: VBAR_EL1 is the host's own; interrupts are masked (module
    // invariant), so only the probes' synchronous exceptions arrive.
    unsafe {
        asm!(
            "mrs {s}, vbar_el1",
            "adr {v}, host_census_vectors",
            "msr vbar_el1, {v}",
            "isb",
            s = out(reg) saved, v = out(reg) _,
            options(nostack, preserves_flags)
        );
    }
    saved
}

fn restore_vectors(saved: u64) {
    // SAFETY: the host's own vectors, read by `install_vectors`.
    unsafe { asm!("msr vbar_el1, {}", "isb", in(reg) saved, options(nostack, preserves_flags)) };
}

/// Next free page of the census's pool.
struct Pool(u64);

impl Pool {
    fn alloc(&mut self, pages: u64, align: u64) -> Option<u64> {
        let pa = self.0.checked_add(align.wrapping_sub(1))? & !align.wrapping_sub(1);
        let end = pa.checked_add(pages.checked_mul(PAGE_SIZE)?)?;
        if end > POOL_END {
            return None;
        }
        self.0 = end;
        Some(pa)
    }
}

/// Fills a page with `f(word index)` and cleans it to the point of
/// coherency (a guest with its MMU off reads memory, not the host's cache).
fn fill(pa: u64, f: impl Fn(u64) -> u64) {
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: a page of the census's pool, host RAM nobody else uses.
        unsafe { (pa.wrapping_add(i.wrapping_mul(8)) as *mut u64).write_volatile(f(i)) };
    }
    let mut va = pa;
    while va < pa.wrapping_add(PAGE_SIZE) {
        // SAFETY: cleaning a line changes no contents.
        unsafe { asm!("dc cvac, {}", in(reg) va, options(nostack, preserves_flags)) };
        va = va.wrapping_add(64);
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// A census VM: its handle, vCPU 0 probing at EL1, vCPU 1 at EL0.
fn create_vm(pool: &mut Pool, header: &ImageHeader, plant: bool) -> Option<u64> {
    let root = pool.alloc(VM_POOL, 16 * PAGE_SIZE)?;
    for p in 0..VM_POOL {
        fill(root.wrapping_add(p.wrapping_mul(PAGE_SIZE)), |_| 0);
    }
    let r = call(HostCall::VmCreate, [root, VM_POOL, 2, 0, 0, 0]);
    if r[0] != Status::Success.raw() {
        fail(format_args!("census: VmCreate: {}", St(r[0])));
        return None;
    }
    let h = r[1];
    let pages = header.pages();
    let image = pool.alloc(pages, PAGE_SIZE)?;
    let words = header.image_bytes().div_ceil(8);
    for p in 0..pages {
        fill(image.wrapping_add(p.wrapping_mul(PAGE_SIZE)), |i| {
            let w = p.wrapping_mul(PAGE_SIZE / 8).wrapping_add(i);
            if w < words {
                // SAFETY: the guest image QEMU's loader put in host RAM.
                unsafe {
                    (layout::IMAGE_LOAD_PA.wrapping_add(w.wrapping_mul(8)) as *const u64)
                        .read_volatile()
                }
            } else {
                0
            }
        });
    }
    let code = pool.alloc(2, PAGE_SIZE)?;
    fill(code, |_| 0);
    fill(code.wrapping_add(PAGE_SIZE), |_| 0);
    let donations = [
        (image, layout::IPA_BASE, pages),
        (code, layout::CENSUS_IPA, 2),
    ];
    for (pa, ipa, n) in donations {
        let mut done = 0;
        while done < n {
            let k = n.wrapping_sub(done).min(isola_abi::DONATE_MAX_PAGES);
            let off = done.wrapping_mul(PAGE_SIZE);
            let r = call(
                HostCall::Donate,
                [
                    h,
                    pa.wrapping_add(off),
                    ipa.wrapping_add(off),
                    perms::ALL,
                    k,
                    0,
                ],
            );
            if r[0] != Status::Success.raw() {
                fail(format_args!("census: Donate: {}", St(r[0])));
                return None;
            }
            done = done.wrapping_add(k);
        }
    }
    for (i, el0) in [(0u64, 0), (1, census::EL0)] {
        let param = el0 | if plant { census::PLANT } else { 0 };
        let x0 = Behaviour::Census.x0(param);
        let r = call(HostCall::VcpuCreate, [h, i, layout::IPA_BASE, x0, 0, 0]);
        if r[0] != Status::Success.raw() {
            fail(format_args!("census: VcpuCreate: {}", St(r[0])));
            return None;
        }
    }
    Some(h)
}

/// This CPU's count of guest system-register accesses the engine answered
/// (emulated or refused).
fn traps_answered() -> u64 {
    [counter::GUEST_SYSREGS, counter::GUEST_UNDEFINED]
        .iter()
        .map(|&c| {
            call(
                HostCall::Accounting,
                [Accounting::Counter as u64, c, 0, 0, 0, 0],
            )[1]
        })
        .fold(0, u64::wrapping_add)
}

/// The state of one census vCPU's run: its view, and the trap count at
/// its last report.
struct Run<'a> {
    view: &'a mut View,
    plant: bool,
    last_traps: u64,
    /// `Exit::Sgi`s since the last report: `ICC_SGI1R_EL1` writes that
    /// trapped and went to the host.
    sgis: u64,
    /// The block being resolved one encoding at a time, if any.
    probes: u64,
}

impl Run<'_> {
    /// Accesses that trapped to EL2 since the last report.
    fn traps_since(&mut self) -> u64 {
        let now = traps_answered();
        let d = now.wrapping_sub(self.last_traps).wrapping_add(self.sgis);
        self.last_traps = now;
        self.sgis = 0;
        d
    }

    /// Records that encoding `e` trapped `n` times in direction `d`.
    fn trapped(&mut self, e: u32, d: u32, n: u64) {
        let Some(f) = self.view.flags.get_mut(e as usize) else {
            return;
        };
        *f |= match (d, n) {
            (_, 0) => 0,
            (dir::READ, _) => flag::READ_TRAP,
            (dir::WRITE, n) => (n.min(3) as u16) << flag::WRITE_TRAPS_SHIFT,
            _ => 0,
        };
    }

    /// A report from the guest; the reply for its `x1`.
    fn report(&mut self, tag: u64, value: u64) -> u64 {
        let (e, d, faults) = census::parse(tag);
        match tag & 0xff {
            msg::CENSUS_BLOCK => {
                let n = self.traps_since();
                // A read pass's eight MRSs trapping eight times: each did.
                if n == 0 || (d == dir::READ && n == 8) {
                    for op2 in 0..8 {
                        self.trapped(e << 3 | op2, d, n / 8);
                    }
                    0
                } else {
                    census::RESOLVE
                }
            }
            msg::CENSUS_ONE => {
                let n = self.traps_since();
                self.trapped(e, d, n);
                0
            }
            msg::CENSUS_VALUE => {
                let i = e as usize;
                let v = &mut *self.view;
                let (Some(f), Some(a), Some(back), Some(again), Some(last), Some(b)) = (
                    v.flags.get_mut(i),
                    v.a_read.get_mut(i),
                    v.a_back.get_mut(i),
                    v.a_again.get_mut(i),
                    v.a_last.get_mut(i),
                    v.b_read.get_mut(i),
                ) else {
                    return 0;
                };
                match (d, self.plant) {
                    (dir::ENTRY, true) => {
                        *f |= flag::A_READ | flag::A_ENTRY;
                        *a = value;
                    }
                    (dir::ENTRY, false) => {
                        *f |= flag::B_READ | flag::B_ENTRY;
                        *b = value;
                    }
                    // A register's entry value stands for its fresh one.
                    (dir::READ, true) if *f & flag::A_ENTRY == 0 => {
                        *f |= flag::A_READ;
                        *a = value;
                    }
                    (dir::READ, false) if *f & flag::B_ENTRY == 0 => {
                        *f |= flag::B_READ;
                        *b = value;
                    }
                    (dir::WRITE, _) => {
                        if faults & 1 == 0 {
                            *f |= flag::A_WRITE;
                        }
                        if faults & 2 == 0 {
                            *f |= flag::A_BACK;
                            *back = value;
                        }
                    }
                    (dir::LAST, _) => {
                        *f |= flag::A_LAST;
                        *last = value;
                    }
                    (dir::AGAIN, _) => {
                        *f |= flag::A_AGAIN;
                        *again = value;
                    }
                    _ => {}
                }
                0
            }
            msg::CENSUS_DONE => {
                self.probes = value;
                0
            }
            msg::FATAL => {
                fail(format_args!(
                    "census: the census vCPU took an exception it did not expect (ESR {value:#x})"
                ));
                0
            }
            _ => 0,
        }
    }
}

/// Runs vCPU `i` of VM `h` until it turns off; returns the probes it made.
fn run_census(h: u64, i: u64, view: &mut View, plant: bool) -> u64 {
    let mut run = Run {
        view,
        plant,
        last_traps: traps_answered(),
        sgis: 0,
        probes: 0,
    };
    let mut reply = 0;
    loop {
        let r = call(HostCall::VcpuRun, [h, i, reply, 0, 0, 0]);
        reply = 0;
        if r[0] != Status::Success.raw() {
            fail(format_args!("census: VcpuRun: {}", St(r[0])));
            return run.probes;
        }
        match Exit::decode([r[1], r[2], r[3]]) {
            Some(Exit::HostCall { args: [tag, value] }) => reply = run.report(tag, value),
            Some(Exit::Sgi { .. }) => run.sgis = run.sgis.wrapping_add(1),
            Some(Exit::Irq | Exit::Wfx { .. } | Exit::Eoi) => {}
            Some(Exit::CpuOff) => return run.probes,
            other => {
                fail(format_args!("census: vCPU {i} ended with {other:?}"));
                return run.probes;
            }
        }
    }
}

/// How one side reached an encoding, as the table says it: `-` undefined,
/// `x` trapped and refused (UNDEFINED to the guest), `e` trapped and
/// emulated, `r`/`w` executed without a trap.
fn access(ok: bool, trapped: bool, direct: char) -> char {
    match (ok, trapped) {
        (false, false) => '-',
        (false, true) => 'x',
        (true, true) => 'e',
        (true, false) => direct,
    }
}

/// What one view says of encoding `e`: its access letters and treatment,
/// and whether VM B saw VM A's value. The treatments:
/// - `switched`: VM A's write took effect, what it left (read right
///   before its exit) differs from its fresh value and came back after
///   its own exit, and VM B, fresh, did not see it;
/// - `reset`: VM A's value did not survive its own exit (nor reached B);
/// - `ignored`: no write VM A made left the register different;
/// - `emulated`: the engine answered the access (read as zero and write
///   ignored, an ID register's view, an SGI);
/// - `read-only`: read directly, the same for A and B at every reading;
///   `volatile`: read directly, but changing by itself (a counter) or with
///   other registers (a view that another register selects);
/// - `LEAKS`: VM B read what VM A left (a failure).
fn judge(v: &View, e: usize) -> Option<(char, char, &'static str, bool)> {
    let f = *v.flags.get(e)?;
    let a = *v.a_read.get(e)?;
    let back = *v.a_back.get(e)?;
    let again = *v.a_again.get(e)?;
    let last = *v.a_last.get(e)?;
    let b = *v.b_read.get(e)?;
    let has = |bit: u16| f & bit != 0;
    let read_trap = has(flag::READ_TRAP);
    // Every write trap count the host records comes from the write probe
    // made alone (`CENSUS_ONE`: `MSR`, then `MRS`): the traps beyond the
    // read-back's are the `MSR`'s.
    let write_traps = f >> flag::WRITE_TRAPS_SHIFT & 3;
    let msr_trap = write_traps > u16::from(read_trap);
    let r = access(has(flag::A_READ), read_trap, 'r');
    let w = access(has(flag::A_WRITE), msr_trap, 'w');
    let read = has(flag::A_READ);
    let stuck = has(flag::A_BACK) && read && back != a;
    let changed = has(flag::A_LAST) && read && last != a;
    let kept = changed && has(flag::A_AGAIN) && again == last;
    let leak = changed && has(flag::B_READ) && b == last;
    let steady = has(flag::B_READ)
        && b == a
        && has(flag::A_LAST)
        && last == a
        && has(flag::A_AGAIN)
        && again == a;
    let treatment = match (r, w) {
        ('-' | 'x', '-' | 'x') => "none",
        _ if leak => "LEAKS",
        (_, 'w') if kept => "switched",
        (_, 'w') if changed || stuck => "reset",
        (_, 'w') => "ignored",
        (_, 'e') | ('e', _) => "emulated",
        ('r', _) if steady => "read-only",
        ('r', _) => "volatile",
        _ => "emulated",
    };
    Some((r, w, treatment, leak))
}

/// The census (see the module documentation). Returns whether it passed.
pub fn main() -> bool {
    let words = [0u64, 8, 16, 24].map(|o| {
        // SAFETY: the guest image QEMU's loader put in host RAM.
        unsafe { (layout::IMAGE_LOAD_PA.wrapping_add(o) as *const u64).read_volatile() }
    });
    let Some(header) = ImageHeader::parse(words) else {
        fail(format_args!("census: no guest image"));
        return false;
    };
    let saved = install_vectors();
    let rec = records();
    let mut pool = Pool(POOL_BASE);
    let (Some(a), Some(b)) = (
        create_vm(&mut pool, &header, true),
        create_vm(&mut pool, &header, false),
    ) else {
        restore_vectors(saved);
        return false;
    };
    let host = &mut rec.host;
    let [first, second] = &mut host.before;
    host_read_all(first, &mut host.ok);
    host_read_all(second, &mut host.ok);
    let mut probes = 0u64;
    for (i, view) in (0u64..).zip(rec.views.iter_mut()) {
        probes = probes.wrapping_add(run_census(a, i, view, true));
        probes = probes.wrapping_add(run_census(b, i, view, false));
    }
    host_read_all(&mut host.after, &mut host.after_ok);
    restore_vectors(saved);
    say!("census: probes: {probes} by VMs A and B, at EL1 and at EL0");
    report(rec)
}

/// One encoding's line: each view's access letters and treatment, and
/// how the host reads it (`r`, `v` changing by itself, `-` not at all).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Line {
    el1: (char, char, &'static str),
    el0: (char, char, &'static str),
    host: char,
}

/// Whether encoding `e` names a field of PSTATE (`op0` 3, `CRn` 4, `CRm`
/// 2 or 3: `NZCV`, `DAIF`, `SPSel`, `PAN`, ...). The switch keeps PSTATE in
/// `SPSR_EL2` with the PC; the census cannot plant it the way it plants a
/// register (its own code and, at EL0, every `eret` into a probe set it).
fn is_pstate(e: usize) -> bool {
    let (op0, _, crn, crm, _) = census::fields(e as u32);
    op0 == 3 && crn == 4 && (crm == 2 || crm == 3)
}

/// Prints the verdicts and a line per run of encodings anybody reaches
/// with the same treatment (consecutive in encoding order).
fn report(rec: &Records) -> bool {
    let mut leaks = 0u32;
    let mut host_changed = 0u32;
    let [el1, el0] = &rec.views;
    let h = &rec.host;
    let mut run: Option<(usize, usize, Line)> = None;
    let flush = |run: Option<(usize, usize, Line)>| {
        if let Some((first, last, l)) = run {
            let ((r1, w1, t1), (r0, w0, t0)) = (l.el1, l.el0);
            let name = census::name(first as u32);
            if first == last {
                say!(
                    "census: {name} el1={r1}{w1}:{t1} el0={r0}{w0}:{t0} host={}",
                    l.host
                );
            } else {
                let to = census::name(last as u32);
                say!(
                    "census: {name}..{to} el1={r1}{w1}:{t1} el0={r0}{w0}:{t0} host={}",
                    l.host
                );
            }
        }
    };
    for e in 0..N {
        let (Some((r1, w1, t1, l1)), Some((r0, w0, t0, l0))) = (judge(el1, e), judge(el0, e))
        else {
            continue;
        };
        let host_ok = h.ok.get(e).copied().unwrap_or(false);
        let stable = host_ok && h.before[0].get(e) == h.before[1].get(e);
        let host_same =
            !stable || (h.after_ok.get(e) == Some(&true) && h.after.get(e) == h.before[1].get(e));
        let host = match (host_ok, stable) {
            (false, _) => '-',
            (true, true) => 'r',
            (true, false) => 'v',
        };
        let name = census::name(e as u32);
        if l1 || l0 {
            leaks = leaks.saturating_add(1);
            say!("census: FAIL {name}: VM B read the value VM A left");
        }
        if !host_same {
            host_changed = host_changed.saturating_add(1);
            say!("census: FAIL {name}: the host's value changed across the guests' runs");
        }
        let pstate = |r: char, w: char, t: &'static str, leak: bool| {
            if is_pstate(e) && !leak && (r, w) != ('-', '-') {
                (r, w, "pstate")
            } else if t == "reset" && host == 'v' {
                // A view of a counter (a timer's TVAL): it changes by itself.
                (r, w, "volatile")
            } else {
                (r, w, t)
            }
        };
        let line = Line {
            el1: pstate(r1, w1, t1, l1),
            el0: pstate(r0, w0, t0, l0),
            host,
        };
        let nobody = t1 == "none" && t0 == "none" && host == '-';
        run = match run {
            Some((first, last, l)) if !nobody && l == line && last.wrapping_add(1) == e => {
                Some((first, e, l))
            }
            r => {
                flush(r);
                (!nobody).then_some((e, e, line))
            }
        };
    }
    flush(run);
    if leaks == 0 {
        say!("census: no register VM A wrote reached VM B, at EL1 or at EL0");
    }
    if host_changed == 0 {
        say!("census: every host register read the same after the guests ran");
    }
    leaks == 0 && host_changed == 0
}
