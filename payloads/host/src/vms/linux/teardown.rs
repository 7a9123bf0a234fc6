//! Tearing the Linux guests down (boot CPU, alone, every other CPU off):
//! `VmDestroy`, every RAM page reclaimed and checked zero (the engine
//! scrubs it), the pool checked zero; in the guest-only run, the engine's
//! accounting exactly as before the guest was made.

use isola_abi::{Accounting, HostCall, PAGE_SIZE, Status};

use super::guest::{self, Outcome};
use crate::calls::{St, call};
use crate::console::say;
use crate::vms::probe::{invalidate_page, probe_read};

/// Accounting totals: `(host, engine, guest)`.
pub(super) fn totals() -> [u64; 3] {
    let r = call(
        HostCall::Accounting,
        [Accounting::Totals as u64, 0, 0, 0, 0, 0],
    );
    [r[1], r[2], r[3]]
}

/// Whether the page at `pa` is the host's again and reads zero: its first
/// word through a probe (a page the engine kept would fault there), the
/// rest directly.
fn page_is_zero(pa: u64) -> bool {
    invalidate_page(pa);
    if probe_read(pa) != Ok(0) {
        return false;
    }
    // SAFETY: the page is host RAM the host owns again (the probe above
    // read it), mapped Normal by the host's stage-1 map; nothing else
    // touches it now.
    let words = unsafe {
        core::slice::from_raw_parts(
            core::ptr::with_exposed_provenance::<u64>(pa as usize),
            (PAGE_SIZE / 8) as usize,
        )
    };
    words.iter().all(|&w| w == 0)
}

/// Destroys every guest and reclaims its pages; with `before`, also checks
/// the accounting totals match them. Whether every check passed.
pub fn teardown(before: Option<[u64; 3]>) -> bool {
    let mut ok = true;
    for g in guest::all() {
        let k = g.k;
        let r = call(HostCall::VmDestroy, [g.handle, 0, 0, 0, 0, 0]);
        if r[0] != Status::Success.raw() {
            say!("linux{k}: FAIL VmDestroy: {}", St(r[0]));
            ok = false;
            continue;
        }
        let mut dirty = 0u64;
        let mut kept = 0u64;
        for p in 0..g.ram_pages {
            let pa = g.ram_pa.wrapping_add(p.wrapping_mul(PAGE_SIZE));
            let r = call(HostCall::Reclaim, [pa, 0, 0, 0, 0, 0]);
            if r[0] != Status::Success.raw() {
                kept = kept.saturating_add(1);
            } else if !page_is_zero(pa) {
                dirty = dirty.saturating_add(1);
            }
        }
        for p in 0..g.pool_pages {
            let pa = g.pool_pa.wrapping_add(p.wrapping_mul(PAGE_SIZE));
            if !page_is_zero(pa) {
                dirty = dirty.saturating_add(1);
            }
        }
        if kept == 0 && dirty == 0 {
            say!(
                "linux{k}: destroyed; all {} RAM pages reclaimed and its {} pool pages back, all zeroed",
                g.ram_pages,
                g.pool_pages
            );
        } else {
            say!("linux{k}: FAIL {kept} RAM pages not reclaimed, {dirty} pages not zeroed");
            crate::vms::tally::count_failure();
            ok = false;
        }
        if g.lock().outcome != Outcome::PoweredOff {
            ok = false;
        }
    }
    guest::clear();
    if let Some(before) = before {
        let after = totals();
        let share = call(
            HostCall::Accounting,
            [Accounting::Sharing as u64, 0, 0, 0, 0, 0],
        );
        if after == before && after.get(2) == Some(&0) && share[1..] == [0, 0, 0] {
            say!("linux: accounting exact after teardown");
        } else {
            say!(
                "linux: FAIL accounting before {before:?}, after {after:?}, sharing {:?}",
                &share[1..]
            );
            ok = false;
        }
    }
    ok
}
