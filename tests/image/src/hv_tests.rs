//! The image's own in-kernel tests: #HV on vector 28, raised synchronously
//! (`int 28`) and asynchronously by the local APIC timer, against the real IDT,
//! with the handler running the engine's `altinj_kernel::handle_hv`. They check the
//! engine-level results (VMPL0 vector taken or deferred by TPR, NMI, #MC,
//! per-VMPL events, NoFurtherSignal cleared) on both paths, deferral while
//! IF = 0, and that async #HVs landing in the middle of the engine's own
//! `before_run`/`after_exit` of simulated vCPUs lose and duplicate nothing.
// Test code: a failing unwrap or index is a failing test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::sync::atomic::Ordering::SeqCst;

use altinj_doorbell::DoorbellFlags;
use altinj_kernel::protocol::{ApicCall, ResultCode};
use altinj_kernel::testing::{Fixture, GUEST_VMPL, GuestRun, hw_run};
use altinj_kernel::{Env, Fabric};

/// The VM-wide state (registration count) of the guests these tests drive.
static VM: altinj_kernel::VmShared = altinj_kernel::VmShared::new();
use altinj_vmsa::EventType;

use crate::hv::{DOORBELL, GUESTS, STATS, VMPL0_TPR, guests, model};
use crate::idt::HV_VECTOR;
use crate::{cpu, lapic, time};

/// Whether NoFurtherSignal (byte 0x01 bit 7) is set in VMPL0's doorbell page.
fn no_further_signal() -> bool {
    DOORBELL.flags.load(SeqCst) & DoorbellFlags::NO_FURTHER_SIGNAL.bits() != 0
}

/// Bit of VMPL `vmpl` in byte 0x03 / `HvEvents::vmpl_events`.
fn vmpl_bit(vmpl: u8) -> u32 {
    1 << (vmpl - 1)
}

/// Counter snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    hv: u64,
    apic_hv: u64,
    vectors: u64,
    vector_sum: u64,
    deferred: u64,
    nmis: u64,
    mcs: u64,
    vmpl_event_entries: u64,
    empty: u64,
}

fn snap() -> Snap {
    Snap {
        hv: STATS.hv.load(SeqCst),
        apic_hv: STATS.apic_hv.load(SeqCst),
        vectors: STATS.vectors.load(SeqCst),
        vector_sum: STATS.vector_sum.load(SeqCst),
        deferred: STATS.deferred.load(SeqCst),
        nmis: STATS.nmis.load(SeqCst),
        mcs: STATS.mcs.load(SeqCst),
        vmpl_event_entries: STATS.vmpl_event_entries.load(SeqCst),
        empty: STATS.empty.load(SeqCst),
    }
}

/// Interrupts off, timer stopped, doorbell empty.
fn quiet() {
    cpu::cli();
    model::disarm_timer();
    model::reset_doorbell();
}

/// One step of busy work whose result depends on every register surviving
/// interrupts (FNV-1a over the step counter).
fn work(hash: u64, i: u64) -> u64 {
    let mut h = hash;
    for byte in i.to_le_bytes() {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    core::hint::black_box(h)
}

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

/// One guest run of simulated vCPU `i` of a fixture split into its parts, as
/// the SVSM's run loop does it: `before_run`, the modelled VMRUN, the guest's
/// handler (lazy EOI through calling-area byte 2, else an EOI call after the
/// exit), `after_exit`. Returns how many vectors the guest received, after
/// checking with the #HV model that each was posted and not yet delivered.
#[allow(clippy::too_many_arguments)]
fn guest_cycle(
    i: usize,
    cut: bool,
    platform: &altinj_kernel::testing::MockPlatform,
    shared: &[altinj_kernel::VcpuShared; GUESTS],
    doorbells: &[altinj_doorbell::DoorbellPage; GUESTS],
    caa: &[core::sync::atomic::AtomicU8; GUESTS],
    engine: &mut altinj_kernel::VcpuEngine,
    vmsa: &mut altinj_vmsa::VmsaPage,
) -> u64 {
    let env =
        Env::new(platform, Fabric::new(shared, &VM), &doorbells[i]).with_no_eoi_byte(caa.get(i));
    guests::IN_ENGINE.store(true, SeqCst);
    engine.before_run(&env, vmsa).unwrap();
    guests::IN_ENGINE.store(false, SeqCst);
    let run = GuestRun {
        interrupt_delivery: cut,
        ..GuestRun::NORMAL
    };
    let hw = hw_run(vmsa, run);
    assert!(!hw.vmrun_failed, "BUSY set at VMRUN on vCPU {i}");
    // EVENTINJ is taken at entry, a queued V_IRQ when the guest opens its
    // window: one run can deliver both.
    let mut got = [None, None];
    if let Some(ev) = hw.event {
        assert_eq!(ev.event_type(), EventType::Intr, "vCPU {i}: {ev:?}");
        got[0] = Some(ev.vector());
    }
    got[1] = hw.virq;
    // The guest's handlers EOI the last taken first; each EOI swaps the
    // calling-area byte and skips the call when it read 1 (lazy EOI).
    let mut eoi_calls = 0;
    for _ in got.iter().rev().flatten() {
        if caa[i].swap(0, SeqCst) != 1 {
            eoi_calls += 1;
        }
    }
    guests::IN_ENGINE.store(true, SeqCst);
    engine.after_exit(&env, vmsa).unwrap();
    guests::IN_ENGINE.store(false, SeqCst);
    for v in got.iter().flatten() {
        assert!(
            guests::delivered(i, *v),
            "vector {v:#x} delivered to vCPU {i} without an outstanding post (duplicate)"
        );
    }
    for _ in 0..eoi_calls {
        let eoi = ApicCall::WriteRegister {
            msr: u64::from(altinj_apic::MSR_EOI),
            value: 0,
        };
        let outcome = engine.handle_apic_call(&env, eoi);
        assert_eq!(outcome.done().map(|r| r.code), Some(ResultCode::Success));
    }
    got.iter().flatten().count() as u64
}

altinj_ktest::suite! {
    fn hv_sync_int28_runs_handler() {
        quiet();
        let before = snap();
        cpu::int28();
        let after = snap();
        assert_eq!(after.hv, before.hv + 1);
        assert_eq!(after.apic_hv, before.apic_hv, "int 28 is not an APIC delivery");
        assert!(!cpu::interrupts_enabled(), "IRETQ restored IF = 0");
    }

    fn hv_sync_posted_vector_is_taken_and_acknowledged() {
        quiet();
        let before = snap();
        assert_eq!(model::post_and_signal(0x31), Ok(true));
        let after = snap();
        assert_eq!(after.hv, before.hv + 1);
        assert_eq!(after.vectors, before.vectors + 1);
        assert_eq!(STATS.last_vector.load(SeqCst), 0x31);
        assert_eq!(DOORBELL.vector.load(SeqCst), 0, "vector acknowledged");
        assert_eq!(DOORBELL.flags.load(SeqCst), 0, "NoFurtherSignal cleared");
    }

    fn hv_sync_nmi_is_taken() {
        quiet();
        let before = snap();
        assert!(model::post_nmi_and_signal());
        assert_eq!(snap().nmis, before.nmis + 1);
        assert_eq!(DOORBELL.flags.load(SeqCst), 0);
    }

    fn hv_no_signal_while_no_further_signal_is_set() {
        quiet();
        // The host signalled once and VMPL0 has not looked yet: a second post
        // must not signal again; the next #HV takes it.
        assert!(DOORBELL.host().raise_no_further_signal());
        let before = snap();
        assert_eq!(model::post_and_signal(0x42), Ok(false));
        assert_eq!(snap().hv, before.hv);
        cpu::int28();
        assert_eq!(STATS.last_vector.load(SeqCst), 0x42);
        assert_eq!(snap().vectors, before.vectors + 1);
    }

    fn hv_apic_timer_one_shot_delivers_exactly_once() {
        quiet();
        let before = snap();
        model::arm_timer(200_000, false);
        cpu::sti();
        let arrived = time::wait_until(2000, || snap().apic_hv > before.apic_hv);
        time::spin_ms(5);
        cpu::cli();
        assert!(arrived, "timer #HV did not arrive within 2 s");
        let after = snap();
        assert_eq!(after.apic_hv, before.apic_hv + 1);
        assert_eq!(after.hv, before.hv + 1);
        assert!(!lapic::in_service(HV_VECTOR), "handler sent EOI");
        assert!(!lapic::pending(HV_VECTOR));
    }

    fn hv_deferred_while_interrupts_off() {
        quiet();
        let before = snap();
        model::post(0x55).unwrap();
        model::arm_timer(100_000, false);
        assert!(time::wait_until(2000, || lapic::timer_current() == 0), "timer expired");
        // QEMU raises the expired timer from its own timer callback, a little later.
        assert!(
            time::wait_until(2000, || lapic::pending(HV_VECTOR)),
            "expired timer is pending in IRR"
        );
        time::spin_ms(2);
        assert_eq!(snap(), before, "nothing delivered with IF = 0");
        assert_eq!(DOORBELL.vector.load(SeqCst), 0x55);
        cpu::sti();
        let arrived = time::wait_until(500, || snap().hv > before.hv);
        cpu::cli();
        assert!(arrived, "pending #HV delivered after STI");
        let after = snap();
        assert_eq!(after.apic_hv, before.apic_hv + 1);
        assert_eq!(after.vectors, before.vectors + 1);
        assert_eq!(STATS.last_vector.load(SeqCst), 0x55);
        assert!(!lapic::pending(HV_VECTOR));
        assert!(!lapic::in_service(HV_VECTOR));
    }

    fn hv_async_apic_timer_lands_while_busy() {
        // The model posts vectors while the kernel computes with short CLI/STI
        // windows; a periodic timer #HV (every 250 us) lands anywhere in the IF = 1
        // windows or right at STI. Some posts are also signalled with int 28.
        const WANTED: u64 = 40;
        quiet();
        let before = snap();
        let mut posted = 0u64;
        let mut posted_sum = 0u64;
        let mut hash = FNV_OFFSET;
        let mut step = 0u64;
        let deadline = time::Deadline::after_ms(10_000);
        model::arm_timer(250_000, true);
        loop {
            cpu::sti();
            for _ in 0..256 {
                hash = work(hash, step);
                step += 1;
            }
            cpu::cli();
            for _ in 0..64 {
                hash = work(hash, step);
                step += 1;
            }
            let vector = 32 + (step % 200) as u8;
            let accepted = if step.is_multiple_of(3) {
                model::post_and_signal(vector).is_ok()
            } else {
                model::post(vector).is_ok()
            };
            if accepted {
                posted += 1;
                posted_sum += u64::from(vector);
            }
            if snap().apic_hv - before.apic_hv >= WANTED {
                break;
            }
            assert!(
                !deadline.passed(),
                "only {} timer #HVs in 10 s",
                snap().apic_hv - before.apic_hv
            );
        }
        model::disarm_timer();
        // Whatever is still posted is taken by one more #HV.
        cpu::int28();
        let after = snap();
        assert!(posted > 0);
        assert_eq!(after.vectors - before.vectors, posted, "each post taken once");
        assert_eq!(after.vector_sum - before.vector_sum, posted_sum);
        assert_eq!(DOORBELL.vector.load(SeqCst), 0);
        // The same work with interrupts off gives the same result: the handler
        // preserved every register and flag the loop relied on.
        let mut expected = FNV_OFFSET;
        for i in 0..step {
            expected = work(expected, i);
        }
        assert_eq!(hash, expected);
    }
    fn hv_engine_defers_vmpl0_vector_blocked_by_tpr() {
        quiet();
        VMPL0_TPR.store(0x50, SeqCst);
        let before = snap();
        assert_eq!(model::post_and_signal(0x45), Ok(true));
        let after = snap();
        assert_eq!(after.hv, before.hv + 1);
        assert_eq!(after.vectors, before.vectors, "class 4 is not above TPR 0x50");
        assert_eq!(after.deferred, before.deferred + 1);
        assert_eq!(STATS.last_deferred.load(SeqCst), 0x45);
        assert_eq!(DOORBELL.vector.load(SeqCst), 0x45, "left pending for the host to see");
        assert!(!no_further_signal(), "NoFurtherSignal cleared");
        // VMPL0 lowers its TPR; the next #HV takes it.
        VMPL0_TPR.store(0, SeqCst);
        cpu::int28();
        assert_eq!(snap().vectors, before.vectors + 1);
        assert_eq!(STATS.last_vector.load(SeqCst), 0x45);
        assert_eq!(DOORBELL.vector.load(SeqCst), 0);
    }

    fn hv_engine_reports_machine_check() {
        quiet();
        let before = snap();
        DOORBELL.host().post_vmpl0_mc();
        assert!(model::signal());
        let after = snap();
        assert_eq!(after.mcs, before.mcs + 1);
        assert_eq!(after.nmis, before.nmis);
        assert_eq!(DOORBELL.flags.load(SeqCst), 0, "#MC and NoFurtherSignal cleared");
    }

    fn hv_engine_notes_guest_vmpl_events_and_leaves_the_descriptor() {
        quiet();
        let before = snap();
        STATS.vmpl_events.store(0, SeqCst);
        DOORBELL.host().post_vector(GUEST_VMPL, 0x61).unwrap();
        assert!(model::signal());
        let after = snap();
        assert_eq!(after.vmpl_event_entries, before.vmpl_event_entries + 1);
        assert_eq!(STATS.vmpl_events.load(SeqCst), vmpl_bit(GUEST_VMPL));
        assert_eq!(after.vectors, before.vectors, "not VMPL0's vector");
        assert_eq!(DOORBELL.per_vmpl_events.load(SeqCst), 0, "byte 0x03 taken");
        assert!(!no_further_signal());
        // The guest's interrupt stays for its VMPL's before_run.
        let pending = DOORBELL.consume(GUEST_VMPL).unwrap();
        assert!(pending.contains(0x61));
    }

    fn hv_spurious_entry_finds_nothing() {
        quiet();
        let before = snap();
        cpu::int28();
        let after = snap();
        assert_eq!(after.empty, before.empty + 1);
        assert_eq!(after.vectors, before.vectors);
    }

    fn hv_async_timer_runs_engine_for_vector_nmi_and_guest_events() {
        quiet();
        let before = snap();
        STATS.vmpl_events.store(0, SeqCst);
        model::post(0x77).unwrap();
        DOORBELL.host().post_vmpl0_nmi();
        DOORBELL.host().post_vector(GUEST_VMPL, 0x88).unwrap();
        assert!(DOORBELL.host().raise_no_further_signal());
        model::arm_timer(100_000, false);
        cpu::sti();
        let arrived = time::wait_until(2000, || snap().apic_hv > before.apic_hv);
        cpu::cli();
        assert!(arrived, "timer #HV did not arrive within 2 s");
        let after = snap();
        assert_eq!(after.apic_hv, before.apic_hv + 1);
        assert_eq!(after.vectors, before.vectors + 1);
        assert_eq!(STATS.last_vector.load(SeqCst), 0x77);
        assert_eq!(after.nmis, before.nmis + 1);
        assert_eq!(after.vmpl_event_entries, before.vmpl_event_entries + 1);
        assert_eq!(STATS.vmpl_events.load(SeqCst), vmpl_bit(GUEST_VMPL));
        assert_eq!(DOORBELL.flags.load(SeqCst), 0, "NMI and NoFurtherSignal cleared");
        assert_eq!(DOORBELL.vector.load(SeqCst), 0);
        assert!(!lapic::in_service(HV_VECTOR), "handler sent EOI");
    }

    fn hv_async_during_engine_work_of_simulated_vcpus_loses_nothing() {
        // The main flow runs a Fixture's vCPUs (before_run, modelled VMRUN,
        // after_exit, EOI) round-robin with IF = 1 while a periodic timer #HV
        // (every 50 us) posts into their doorbell pages and IPI mailboxes and
        // runs their handle_hv, landing anywhere, also inside before_run and
        // after_exit. Every vector posted must reach its guest exactly once.
        const WANTED: u64 = 300;
        quiet();
        let mut f: Fixture<GUESTS> = Fixture::new();
        for i in 0..GUESTS {
            f.create(i).unwrap();
        }
        // Split the fixture: the pages the handler posts into are only ever
        // borrowed shared from here on (the handler holds the same `&`).
        let Fixture {
            platform,
            shared,
            // The engine calls below use the static `VM` (no registration
            // calls here).
            vm: _,
            doorbells,
            vmsas,
            caa,
            engines,
            ..
        } = &mut f;
        let (platform, shared, doorbells, caa) = (&*platform, &*shared, &*doorbells, &*caa);
        let posts = || {
            guests::DOORBELL_POSTS.load(SeqCst) + guests::MAILBOX_POSTS.load(SeqCst)
        };
        let (posts_before, noted_before) = (posts(), guests::GUEST_HV_NOTED.load(SeqCst));
        let hits_before = guests::HITS_IN_ENGINE.load(SeqCst);
        let before = snap();
        let mut delivered = 0u64;
        let mut cycles = 0u64;
        let deadline = time::Deadline::after_ms(20_000);
        // SAFETY: `doorbells` and `shared` borrow `f`, which outlives the
        // timer: `model::disarm_timer` (which clears them) runs below, and the
        // runner runs it again after the test; they are only borrowed shared.
        unsafe { guests::set(doorbells, shared, GUEST_VMPL) };
        model::arm_timer(50_000, true);
        cpu::sti();
        while snap().apic_hv - before.apic_hv < WANTED {
            for (i, (engine, vmsa)) in engines.iter_mut().zip(vmsas.iter_mut()).enumerate() {
                let engine = engine.as_mut().unwrap();
                // Now and then the delivery is cut by an exit (re-injection).
                let cut = cycles % 7 == 3;
                delivered += guest_cycle(i, cut, platform, shared, doorbells, caa, engine, vmsa);
                cycles += 1;
            }
            assert!(
                !deadline.passed(),
                "only {} timer #HVs in 20 s",
                snap().apic_hv - before.apic_hv
            );
        }
        cpu::cli();
        model::disarm_timer();
        let hits = guests::HITS_IN_ENGINE.load(SeqCst) - hits_before;
        // Drain: runs until every posted vector reached its guest.
        for _ in 0..1000 {
            if guests::outstanding() == 0 {
                break;
            }
            for (i, (engine, vmsa)) in engines.iter_mut().zip(vmsas.iter_mut()).enumerate() {
                let engine = engine.as_mut().unwrap();
                delivered += guest_cycle(i, false, platform, shared, doorbells, caa, engine, vmsa);
                cycles += 1;
            }
        }
        let posted = posts() - posts_before;
        assert_eq!(guests::outstanding(), 0, "posted vectors never delivered (lost)");
        assert!(posted >= WANTED, "the model posted only {posted}");
        assert_eq!(delivered, posted, "each post delivered exactly once");
        assert!(guests::GUEST_HV_NOTED.load(SeqCst) > noted_before, "guest #HVs ran");
        assert!(hits > 0, "no #HV landed inside before_run/after_exit in {cycles} cycles");
        for (i, engine) in engines.iter().enumerate() {
            let c = engine.as_ref().unwrap().counters();
            assert_eq!(c.host_vectors_rejected, 0, "vCPU {i}: a legal post was refused");
            assert_eq!(c.platform_errors, 0, "vCPU {i}");
        }
    }
}
