//! Engines re-created for handed-back vCPUs (issue 9 path 7, scenario
//! `recreate`).
//!
//! The model \[choice\]: after its hand-back a vCPU runs under the host with
//! AlternateInjection clear. Some time later it restarts (the guest takes
//! the CPU offline and brings it back: INIT-SIPI, as at CPU hotplug), and
//! the SVSM builds it afresh as at AP creation: a new VMSA with
//! AlternateInjection, a new doorbell page and a new engine for the same
//! slot, whose creation reopens the slot's closed mailbox. The restarted
//! guest boots again (x2APIC, SVR, host vectors, timer); its REGISTER
//! answers CANNOT_REGISTER (the VM-wide count is 0, spec §5), which leaves
//! the new engine emulating the APIC (a re-created engine starts on).
//! Everything the host's APIC still held for the vCPU is discarded by the
//! INIT (Intel SDM vol. 3A §11.4.7.3): the ledger counts those instances as
//! architected discards, like an APIC disable.
//!
//! The race: at the moment of the reopen another vCPU's post to the slot
//! is half done: its RMW of its PIR word (vectors below 208 live outside
//! word 0) happened while the mailbox was closed, its word-0 RMW (which
//! announces ON, or finds CLOSED and takes the bit back to forward it)
//! comes after the reopen. The restart waits until no guest's IPI call
//! that may reach the vCPU is in flight (the OS takes a CPU down under
//! stop_machine, as Linux does, so no IPI to it is half sent then).
//! The sender is a guest whose VMPL0 the host
//! descheduled between the two RMWs; it resumes once the restarted guest
//! has booted, and the IPI is accepted then, so it is owed one delivery by
//! the new engine (or a forward to the host, had the post found the
//! mailbox closed). Meanwhile the guests send no IPI to the restarting
//! vCPU (an OS does not IPI a CPU that is not online: Linux's
//! cpu_online_mask; no all-but-self shorthand while one is offline), so
//! nothing else drains the mailbox before the post completes. A reopen
//! that wipes words 1-3 (plain stores) loses the instance: the ledger
//! reports it never delivered.
//!
//! Until its restart a handed-back vCPU gets IPIs as before: the senders'
//! engines forward them to the host by #HV IPI (`credit_ipi` checks each
//! forward).

use alloc::format;

use altinj_doorbell::DoorbellPage;
use altinj_kernel::mailbox::Post;
use altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR;
use altinj_kernel::{Fabric, VcpuEngine};

use crate::guest::{Call, Dest, Guest, IPI_VECTORS};
use crate::ledger::Pending;
use crate::world::{NEVER, Sabotage, Sim, engine_config, fresh_vmsa};

impl Sim {
    /// When vCPU `j`'s APIC was handed back: schedule its restart.
    pub(crate) fn schedule_recreate(&mut self, j: usize) {
        let Some(mean) = self.profile.recreate_after else {
            return;
        };
        if self.draining {
            return;
        }
        let at = self
            .now
            .saturating_add(mean)
            .saturating_add(self.rng.below(mean.max(1)));
        if let Some(v) = self.vcpus.get_mut(j) {
            v.recreate_at = at;
        }
    }

    /// vCPU `i` restarts and the SVSM creates its engine again, with a
    /// sender's post split across the mailbox's reopen (module doc).
    pub(crate) fn recreate_vcpu(&mut self, i: usize) {
        if self.ipi_in_flight_to(i) {
            // Not yet: the restart waits until no IPI call to this vCPU
            // is in flight (module doc).
            if let Some(v) = self.vcpus.get_mut(i) {
                v.recreate_at = self.now.saturating_add(10_000);
            }
            return;
        }
        let n = self.n();
        // The sender preempted inside its post: any other vCPU.
        let from = i
            .saturating_add(1)
            .saturating_add(self.rng.index(n.saturating_sub(1).max(1)))
            .checked_rem(n)
            .unwrap_or(0);
        let candidates: alloc::vec::Vec<u8> =
            IPI_VECTORS.iter().copied().filter(|v| *v < 208).collect();
        let vector = self.rng.pick(&candidates, 0x40);
        // Sabotage: the word-N bit vanishes, as a reopen with plain stores
        // wiped it (issue 9 path 7 before its fix).
        let wipe = self.config.sabotage == Some(Sabotage::ReopenWipesPost);
        let first = wipe
            || self
                .m
                .shared
                .get(i)
                .is_some_and(|s| s.mailbox().post_first_step(vector));
        // INIT: whatever the host's APIC held for this vCPU is discarded.
        self.discard_at_reset(i);
        let profile = self.profile;
        if let Some(page) = self.m.vmsas.get_mut(i) {
            *page = fresh_vmsa(&profile);
        }
        if let Some(page) = self.m.doorbells.get_mut(i) {
            *page = DoorbellPage::new();
        }
        if let Some(b) = self.m.caa.get(i) {
            b.store(0, core::sync::atomic::Ordering::Release);
        }
        if let Some(t) = self.m.platform.timers.get(i) {
            t.set(None);
        }
        let engine = VcpuEngine::new(
            engine_config(i),
            Fabric::new(self.m.shared.as_slice(), &self.m.vm),
        );
        match engine {
            Ok(engine) => {
                // The old engine's counters stay in the report.
                let old = self.m.engines.get_mut(i).and_then(|s| s.replace(engine));
                if let Some(old) = old {
                    self.stats.absorb_engine(i, &old.counters());
                }
            }
            Err(fatal) => {
                self.violation(i, format!("engine re-creation failed: {fatal:?}"));
                return;
            }
        }
        self.stats.engines_recreated = self.stats.engines_recreated.saturating_add(1);
        let now = self.now;
        // The restarted guest deregisters again later (the count is 0, so
        // that hands it back again, and it restarts again).
        let again = (!self.draining).then(|| {
            self.step
                .saturating_add(self.rng.below((self.config.steps / 8).max(1)))
        });
        if let Some(v) = self.vcpus.get_mut(i) {
            v.handed_back = false;
            v.host_apic = None;
            v.host_nmi = false;
            v.host_mc = false;
            v.kvm_eventinj = None;
            v.kvm_virq = None;
            v.kvm_vnmi = false;
            v.virq_taken = None;
            v.cut_in_service = None;
            v.ai_stuck_reported = false;
            v.busy_streak = 0;
            v.kicks_in_batch = 0;
            v.halted = false;
            v.run_in_flight = false;
            v.hv_signalled = false;
            v.recreate_at = NEVER;
            v.guest = Guest::new(i, &profile, again);
            // The first entry: VMPL0 prepares the first run.
            v.exit_due = true;
            v.next_at = now;
            v.split_post = first.then_some((from, vector));
        }
        if let Some(t) = self.trace.as_mut() {
            t.instant(
                i,
                now,
                "engine re-created",
                &format!("split post {vector:#x}"),
            );
        }
    }

    /// vCPU `i`'s guest finished a boot step: once it has booted, the
    /// sender preempted inside its post to it resumes (module doc).
    pub(crate) fn finish_split_post(&mut self, i: usize) {
        let Some(v) = self.vcpus.get(i) else { return };
        if !v.guest.booted() {
            return;
        }
        let Some((from, vector)) = v.split_post else {
            return;
        };
        if let Some(v) = self.vcpus.get_mut(i) {
            v.split_post = None;
        }
        let post = self
            .m
            .shared
            .get(i)
            .map(|s| s.mailbox().post_second_step(vector));
        self.stats.split_posts = self.stats.split_posts.saturating_add(1);
        // Accepted now (the target is online and software-enabled): a new
        // instance (nothing of it can be pending in a freshly reset APIC).
        self.request_vector(i, vector, Pending::No);
        match post {
            Some(Post::Kick | Post::RetryKick) => {
                self.host_kick(from, i, DEFAULT_NOTIFICATION_VECTOR);
            }
            Some(Post::Covered) => {}
            Some(Post::Closed) | None => self.violation(
                i,
                format!("post of {vector:#x} split by the reopen found the mailbox closed"),
            ),
        }
    }

    /// Whether another guest has made an IPI call that may reach vCPU `i`
    /// and VMPL0 has not answered it yet.
    fn ipi_in_flight_to(&self, i: usize) -> bool {
        self.vcpus
            .iter()
            .enumerate()
            .any(|(j, v)| match v.guest.call {
                Some(Call::Ipi { dest, .. }) => match dest {
                    Dest::Physical(t) => t as usize == i,
                    Dest::AllButSelf => j != i,
                    Dest::SelfIpi => false,
                },
                _ => false,
            })
    }

    /// Whether guests may send IPIs to vCPU `j` (`recreate`: not while it
    /// is coming online, module doc).
    pub(crate) fn ipi_target_online(&self, j: usize) -> bool {
        self.vcpus.get(j).is_none_or(|v| v.split_post.is_none())
    }
}
