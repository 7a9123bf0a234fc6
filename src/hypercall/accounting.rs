//! `Accounting`: page counts by owner and sharing, one VM's usage, and the
//! per-CPU event counters.

use crate::arch::Arch;
use crate::engine::Engine;
use isola_abi::{Accounting, Status};

use super::*;

impl<A: Arch> Engine<A> {
    /// `Accounting(selector, handle)`.
    pub(super) fn accounting(&self, selector: u64, handle: u64) -> CallResult {
        match Accounting::from_raw(selector).ok_or(Status::InvalidArgument)? {
            Accounting::Totals => {
                let c = self.db.totals();
                Ok([c.host, c.engine, c.guest])
            }
            Accounting::Sharing => {
                let c = self.db.totals();
                Ok([c.host_shared, c.guest_shared, self.awaiting_reclaim()])
            }
            Accounting::Dma => Ok(self.arch.dma_faults()),
            Accounting::Vm => {
                let (_, g) = self.lock_vm(handle)?;
                Ok([g.owned, g.borrowed, g.pool.total()])
            }
            Accounting::Counter => {
                let (mine, sum) = self
                    .counter(handle >> 32, handle & 0xffff_ffff)
                    .ok_or(Status::InvalidArgument)?;
                Ok([mine, sum, 0])
            }
        }
    }
}
